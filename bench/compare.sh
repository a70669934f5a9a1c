#!/usr/bin/env bash
# The op benchmarks of an earlier commit, for bench/report.py --before:
#
#   bench/compare.sh <commit>   ->  build/bench-before.json
#
# Builds <commit> (CPU kernels only) in a git worktree under build/before with
# this checkout's .venv, runs that commit's bench/test_bench_ops.py there (the
# fused ops and the copy floor; the references are not re-timed), and removes
# the worktree. Run it right before `make bench` on an idle machine, so the two
# runs see the same machine state.
set -euo pipefail
commit=${1:?usage: bench/compare.sh <commit>}
root=$(git rev-parse --show-toplevel)
py=$root/.venv/bin/python
dir=$root/build/before
git -C "$root" worktree remove --force "$dir" 2>/dev/null || rm -rf "$dir"
git -C "$root" worktree add --detach "$dir" "$commit"
trap 'git -C "$root" worktree remove --force "$dir"' EXIT
(cd "$dir" && DIFFACCEL_NO_CUDA=1 "$py" setup.py -q build_ext --inplace)
# python -P and PYTHONPATH: that commit's diffaccel, not this checkout's.
(cd "$dir" && MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=134217728 PYTHONPATH="$dir" \
  "$py" -P -m pytest bench/test_bench_ops.py -q -p no:cacheprovider --benchmark-only -k "fused or copy" \
  --benchmark-json="$root/build/bench-before.json" --benchmark-columns=median,rounds)
echo "wrote $root/build/bench-before.json"
