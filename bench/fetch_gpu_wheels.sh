#!/usr/bin/env bash
# The packages bench/gpu_check.sh needs that the GPU machine's image lacks
# (it has no network): diffusers and k-diffusion for the drop-in tests and
# benchmarks, with the dependencies the image does not hold (checked against
# the device tool's KINDS.md package list). Run here, where pip can download;
# then name .whl in the device tool's `carry` (.gitignore keeps it out of git);
# gpu_check.sh installs them.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip download -q --no-deps --only-binary=:all: -d .whl \
  diffusers==0.42.1 importlib_metadata==8.7.0 k-diffusion==0.1.1.post1 torchsde==0.2.6 trampoline==0.1.2
ls -l .whl
