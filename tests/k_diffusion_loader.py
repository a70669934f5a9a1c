"""k-diffusion's sampling module, loaded from the installed package without its
__init__: that imports torchvision (for its training utilities), which these
machines do not need; the sampling module itself needs only scipy,
torchdiffeq, torchsde, tqdm and one helper of k_diffusion.utils (append_dims),
so it is loaded under a stand-in ``k_diffusion`` package whose ``utils`` holds
that one helper. Used by the tests and the benchmarks."""

import importlib.util
import os
import sys
import types

import pytest


def load_k_diffusion_sampling():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip("k-diffusion is not installed (make test installs it)")
    package_dir = spec.submodule_search_locations[0]
    package = types.ModuleType("k_diffusion")
    package.__path__ = [package_dir]
    utils = types.ModuleType("k_diffusion.utils")

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    package.utils = utils
    saved = {name: sys.modules.get(name) for name in ("k_diffusion", "k_diffusion.utils")}
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = package, utils
    try:
        sampling_spec = importlib.util.spec_from_file_location(
            "k_diffusion.sampling", os.path.join(package_dir, "sampling.py")
        )
        sampling = importlib.util.module_from_spec(sampling_spec)
        sampling_spec.loader.exec_module(sampling)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return sampling
