"""Builds diffaccel._C, the compiled ops.

The CPU kernels are always built. The CUDA kernels (csrc/cuda/*.cu) are added
only when the installed torch was built with CUDA and nvcc is found, so the
same command works on a CPU-only machine. Nothing is compiled with
-march=native: the CPU kernels carry AVX-512, AVX2 and baseline clones
(target_clones) and the loader picks one for the CPU at run time.
"""

import glob
import os
import shutil

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def cuda_available_for_build():
    import torch

    if os.environ.get("DIFFACCEL_NO_CUDA") == "1":
        return False
    nvcc = shutil.which("nvcc") or (
        cpp_extension.CUDA_HOME and os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    )
    return bool(torch.version.cuda) and bool(nvcc) and bool(sources("csrc/cuda/*.cu"))


def extension():
    cxx_flags = [
        "-O3",
        "-fopenmp",  # at::parallel_for's OpenMP backend is inlined from the torch headers
        "-ffp-contract=off",  # no FMA contraction: the same bits at every ISA level
        "-fvisibility=hidden",
        # Every loop head on a 64-byte line: with the default 16, an unrelated
        # change moved ei_step's 2M loop and cost it 13% in cache (2026-12-04).
        "-falign-loops=64",
    ]
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    # DIFFACCEL_CPU_CLONES=0: the CPU kernels in one baseline clone instead of
    # three ISA clones; the build takes about a third of the time (the GPU
    # check uses it: device time is short and CPU speed is not measured there).
    if os.environ.get("DIFFACCEL_CPU_CLONES") == "0":
        cxx_flags.append("-DDIFFACCEL_CPU_BASELINE_ONLY")
    link_flags = ["-fopenmp"]
    # DIFFACCEL_SANITIZE=1: AddressSanitizer + UndefinedBehaviorSanitizer, any
    # report fatal (make sanitize builds this into build/sanitize and runs the
    # op tests and the fuzzer under it).
    if os.environ.get("DIFFACCEL_SANITIZE") == "1":
        sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
        cxx_flags = [f for f in cxx_flags if f != "-O3"] + ["-O1", "-g1", "-fno-omit-frame-pointer", *sanitizers]
        link_flags += sanitizers
    common = dict(
        name="diffaccel._C",
        include_dirs=include_dirs,
        extra_link_args=link_flags,
    )
    cpu_sources = sources("csrc/cpu/*.cpp") + sources("csrc/torch/*.cpp")
    if cuda_available_for_build():
        return cpp_extension.CUDAExtension(
            sources=cpu_sources + sources("csrc/cuda/*.cu"),
            define_macros=[("DIFFACCEL_WITH_CUDA", None)],
            extra_compile_args={
                "cxx": cxx_flags,
                # --fmad=false, like the CPU's -ffp-contract=off: no fused
                # multiply-add, so the kernels round exactly as the reference's
                # separate multiplies and adds (measured on an H200: with FMA,
                # 1 element in 32768 of a 6-term ei_step differed by 40 ulp
                # after cancellation). The ops are memory-bound; FMA buys nothing.
                "nvcc": ["-O3", "--expt-relaxed-constexpr", "--fmad=false"]
                + os.environ.get("DIFFACCEL_NVCC_FLAGS", "").split(),
            },
            **common,
        )
    return cpp_extension.CppExtension(sources=cpu_sources, extra_compile_args={"cxx": cxx_flags}, **common)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
