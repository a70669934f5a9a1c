"""The accelerated classes by name (ACCELERATED) and accelerate(pipe), which
swaps a pipeline's schedulers for them (graph_pipeline, which captures a
pipeline's loop, is in graphed.py)."""

from __future__ import annotations

import importlib
import warnings
from typing import List

import diffusers as _diffusers

from diffaccel.integrations.diffusers import common

# The family modules, each holding accelerated classes.
_FAMILY_MODULES = (
    "dpm_solver",
    "ddim_ddpm",
    "euler",
    "flow_matching",
    "helios",
    "ipndm",
    "parallel",
    "predictor_corrector",
    "proteina",
    "repaint",
    "consistency",
)

# Every accelerated class by the name of the diffusers class it replaces: the
# public _FusedStep subclasses of the family modules.
ACCELERATED = {
    cls.__name__: cls
    for module in (importlib.import_module(f"{__package__}.{name}") for name in _FAMILY_MODULES)
    for cls in vars(module).values()
    if isinstance(cls, type)
    and issubclass(cls, common._FusedStep)
    and cls.__module__ == module.__name__
    and not cls.__name__.startswith("_")
}


def accelerate(obj):
    """Swaps diffusers schedulers for their accelerated classes, built from the
    same config. ``obj`` is a scheduler (the accelerated one is returned) or a
    pipeline: every scheduler among its components (``scheduler``, and
    ``inverse_scheduler``, ``prior_scheduler``, ... where it has them) is
    replaced in place and the pipeline returned. Returns ``(result, changes)`` with ``changes`` a list of what was
    swapped. A scheduler without an accelerated class, or with a config option
    the accelerated step does not fuse, is kept, with a warning naming why."""
    changes: List[str] = []

    def swap(scheduler, where: str = ""):
        name = type(scheduler).__name__
        cls = ACCELERATED.get(name)
        if cls is None:
            if not isinstance(scheduler, tuple(ACCELERATED.values())):
                warnings.warn(f"diffaccel: no accelerated {name} yet; keeping the stock scheduler", stacklevel=3)
            return scheduler
        candidate = cls.from_config(scheduler.config)
        bad = candidate.unsupported_options()
        if bad:
            warnings.warn(
                f"diffaccel: {name} option(s) {', '.join(bad)} not accelerated; keeping the stock scheduler",
                stacklevel=3,
            )
            return scheduler
        changes.append(f"{name} -> diffaccel {cls.__name__}{where}")
        return candidate

    if isinstance(obj, _diffusers.SchedulerMixin):
        return swap(obj), changes
    components = getattr(obj, "components", None)  # a DiffusionPipeline's registered modules
    if isinstance(components, dict):
        # (UnCLIP's pipelines have no `scheduler`: prior_, decoder_ and super_res_scheduler)
        names = [name for name, part in components.items() if isinstance(part, _diffusers.SchedulerMixin)]
    elif hasattr(obj, "scheduler"):
        names = [name for name in ("scheduler", "inverse_scheduler") if getattr(obj, name, None) is not None]
    else:
        raise TypeError(f"accelerate() takes a diffusers scheduler or pipeline, got {type(obj).__name__}")
    for name in names:
        setattr(obj, name, swap(getattr(obj, name), "" if name == "scheduler" else f" ({name})"))
    return obj, changes
