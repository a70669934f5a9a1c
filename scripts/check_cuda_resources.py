"""Fails when a float32 CUDA kernel keeps data in local memory.

`make cuda-compile-check` compiles every csrc/cuda/*.cu for sm_90 with
``-Xptxas -v`` and hands the reports to this script. Local memory (a stack
frame, or spills) in these memory-bound kernels means extra loads and stores
per element; a machine without a GPU cannot time that, but it can see it in
the compiler's report. (2026-11-27: a coefficient row chosen by pointer between
two register arrays gave ei_step and multistep_combine 40-72 byte frames.)

    python scripts/check_cuda_resources.py build/cuda-check/*.ptxas.txt
"""

import re
import subprocess
import sys

# Kernels allowed a frame, and why.
ALLOWED = {
    # Box-Muller's sinf/cosf carry a large-argument reduction with a local
    # array; it runs only for |argument| > 1e5, and the argument is in [0, 2 pi).
    "langevin_update_kernel<float>": "sinf/cosf's never-taken large-argument path",
}

ENTRY = re.compile(r"Compiling entry function '([^']+)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def main(paths):
    entries = []  # (mangled, frame, spill stores, spill loads)
    for path in paths:
        current = None
        for line in open(path):
            m = ENTRY.search(line)
            if m:
                current = m.group(1)
            m = FRAME.search(line)
            if m and current:
                entries.append((current, *map(int, m.groups())))
                current = None
    if not entries:
        print("check_cuda_resources: no ptxas reports found in", " ".join(paths))
        return 1
    bad = []
    for (_mangled, frame, stores, loads), name in zip(entries, demangle([e[0] for e in entries])):
        kernel = re.sub(r"diffaccel::cuda::|\(anonymous namespace\)::|^void ", "", name)
        kernel = kernel[: kernel.index("(")] if "(" in kernel else kernel
        if "<float" not in kernel or not (frame or stores or loads):
            continue  # float64 kernels are for checking, not speed
        if any(kernel.startswith(allowed) for allowed in ALLOWED):
            continue
        bad.append(f"  {kernel}: {frame} bytes stack frame, {stores} bytes spill stores, {loads} bytes spill loads")
    print(
        f"check_cuda_resources: {len(entries)} kernels, "
        f"{sum(1 for e in entries if not any(e[1:]))} without local memory"
    )
    if bad:
        print("float32 kernels using local memory (see scripts/check_cuda_resources.py):\n" + "\n".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
