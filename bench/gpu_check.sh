#!/usr/bin/env bash
# The one command for the GPU machine (H100/H200, no network; its own python3
# with torch and triton): builds the extension with CUDA for sm_90, runs the
# whole test suite on CUDA once per GPU backend (tests/test_cuda.py checks every
# op under torch.cuda.set_sync_debug_mode("error"), CUDA-graph capture and the
# launch counts; tests/test_graph.py the whole-loop graphs), then benchmarks
# every op x backend against the eager and torch.compile'd reference and the
# device copy bandwidth, the drop-ins against stock diffusers, and whole
# 20-step loops eager against graphed (bench/test_bench_graph.py). It writes one
# markdown report, <date>-<card>.md, into $OUT (the device tool brings it
# back) or build/gpu-check, and ends well inside 8 minutes: every phase has a
# time limit and the report is written whatever fails.
#
#   bash bench/gpu_check.sh            # everything
#   PHASES="build bench" bash bench/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
PHASES=${PHASES:-"build check tests bench"}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}  # -gencode=arch=compute_90,code=sm_90
# Wheels carried to the machine (no network there): diffusers and k-diffusion
# for the drop-in tests and benchmarks. bench/fetch_gpu_wheels.sh puts them in
# .whl/ (git-ignored); name .whl in the device tool's carry.
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target build/site .whl/*.whl && \
    export PYTHONPATH="$PWD/build/site:$PYTHONPATH"
fi
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | sed 's/NVIDIA //; s/ .*//' | tr 'A-Z' 'a-z')
report="$OUT/$(date +%F)-${card:-gpu}.md"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

{
  echo "# diffaccel GPU check, $(date +%F), ${card:-unknown card}"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  $PY -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'CUDA', torch.version.cuda)" 2>&1
  $PY -c "import triton; print('triton', triton.__version__)" 2>&1
  nvcc --version 2>&1 | tail -1
  echo '```'
} > "$report"

section() { printf '\n## %s\n\n' "$1" >> "$report"; }
fenced_tail() { echo '```' >> "$report"; tail -n "$2" "$1" >> "$report"; echo '```' >> "$report"; }

if [[ " $PHASES " == *" build "* ]]; then
  section "Build (setup.py build_ext --inplace, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
  rm -f diffaccel/_C*.so
  # One CPU clone (DIFFACCEL_CPU_CLONES=0): the three-ISA CPU build was the
  # long pole of the 147 s build on 2026-11-27, and CPU speed is not measured here.
  DIFFACCEL_CPU_CLONES=0 timeout 240 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1
  status=$?
  $PY -c "from diffaccel import _extension as e; print('extension loaded:', e.available(), '| with_cuda:', e._C.with_cuda if e._C else None, '|', e.load_error or '')" >> "$OUT/build.log" 2>&1
  echo "exit $status after $(elapsed) s" >> "$report"
  fenced_tail "$OUT/build.log" 12
  $PY -m diffaccel info >> "$OUT/build.log" 2>&1
  echo '```' >> "$report"; $PY -m diffaccel info >> "$report" 2>&1; echo '```' >> "$report"
  # The 2026-11-27 run segfaulted whenever a C++ argument check threw on CUDA
  # tensors. Which toolchain built the extension, and does a throw from the CPU
  # kernels' checks crash too? (Each probe should print "ValueError: ...".)
  section "Probe: C++ argument errors"
  {
    echo '```'
    echo "build compiler: $($PY -c 'import sysconfig; print(sysconfig.get_config_var("CXX"))') ; c++: $(c++ --version 2>&1 | head -1)"
    ls -d /opt/gcc/bin/g++ >/dev/null 2>&1 && echo "/opt/gcc/bin/g++: $(/opt/gcc/bin/g++ --version | head -1)"
    ldd diffaccel/_C*.so 2>&1 | grep -E "stdc|gcc_s|gomp" | sed 's/ (0x.*//'
    for dev in cpu cuda; do
      $PY -c "
import torch, diffaccel
try:
    torch.ops.diffaccel.threshold(torch.randn(2, 3, device='$dev'), 'dynamic', 2.0, 1.0, 'diffusers')
except Exception as e:
    print(type(e).__name__ + ': ' + str(e).splitlines()[0])
" 2>&1 | tail -1 | sed "s/^/$dev: /"
      echo "$dev: exit ${PIPESTATUS[0]}"
    done
    echo '```'
  } >> "$report" 2>&1
fi

if [[ " $PHASES " == *" check "* ]]; then
  section "diffaccel check --device cuda"
  echo '```' >> "$report"
  timeout 120 $PY -m diffaccel check --device cuda >> "$report" 2>&1
  echo "exit $?" >> "$report"
  echo '```' >> "$report"
fi

if [[ " $PHASES " == *" tests "* ]]; then
  for backend in cuda triton; do
    section "Tests on CUDA, DIFFACCEL_BACKEND=$backend"
    DIFFACCEL_TEST_DEVICE=cuda DIFFACCEL_BACKEND=$backend timeout ${TEST_SECONDS:-110} \
      $PY -m pytest tests -q -n 12 -p no:cacheprovider -rfE --durations=8 > "$OUT/tests-$backend.log" 2>&1
    echo "exit $? after $(elapsed) s (exit 124: the TEST_SECONDS limit cut the run)" >> "$report"
    echo '```' >> "$report"
    grep -E "^(FAILED|ERROR) " "$OUT/tests-$backend.log" | cut -c1-300 | head -60 >> "$report"
    # The slowest tests, to size the next run's time limit.
    grep -E "^[0-9.]+s (call|setup|teardown) " "$OUT/tests-$backend.log" | head -8 >> "$report"
    tail -n 1 "$OUT/tests-$backend.log" >> "$report"
    echo '```' >> "$report"
  done
fi

if [[ " $PHASES " == *" bench "* ]]; then
  section "Benchmarks"
  # Two runs, so that the kernels' numbers survive if torch.compile's are slow to build.
  timeout ${BENCH_SECONDS:-100} $PY -m pytest bench/test_bench_gpu.py -q -p no:cacheprovider --benchmark-only \
    -k "not compiled_reference" --benchmark-json="$OUT/bench-gpu.json" > "$OUT/bench.log" 2>&1
  echo "kernels, eager, copy, torch.quantile: exit $? after $(elapsed) s" >> "$report"
  timeout ${COMPILE_BENCH_SECONDS:-150} $PY -m pytest bench/test_bench_gpu.py -q -p no:cacheprovider --benchmark-only \
    -k "compiled_reference and (large or xlarge)" --benchmark-json="$OUT/bench-gpu-compiled.json" >> "$OUT/bench.log" 2>&1
  echo "torch.compile of the reference: exit $? after $(elapsed) s" >> "$report"
  # diffusers is not on the GPU image: the drop-in bench runs where it is carried.
  if $PY -c "import diffusers" 2>/dev/null; then
    DIFFACCEL_BENCH_DEVICE=cuda timeout ${DIFFUSERS_BENCH_SECONDS:-60} $PY -m pytest bench/test_bench_diffusers.py -q \
      -p no:cacheprovider --benchmark-only --benchmark-json="$OUT/bench-gpu-diffusers.json" >> "$OUT/bench.log" 2>&1
    echo "diffusers drop-ins: exit $? after $(elapsed) s" >> "$report"
  else
    echo "diffusers drop-ins: skipped (diffusers not importable; carry its wheel, see the device README)" >> "$report"
  fi
  # Whole loops with a network: stock diffusers, eager, one CUDA graph (diffaccel.graph).
  DIFFACCEL_BENCH_DEVICE=cuda timeout ${GRAPH_BENCH_SECONDS:-75} $PY -m pytest bench/test_bench_graph.py -q \
    -p no:cacheprovider --benchmark-only --benchmark-json="$OUT/bench-gpu-graph.json" >> "$OUT/bench.log" 2>&1
  echo "graphed loops: exit $? after $(elapsed) s" >> "$report"
  jsons=$(ls "$OUT"/bench-gpu*.json 2>/dev/null)
  if [ -n "$jsons" ]; then
    $PY bench/report.py $jsons 2>&1 | sed '1,2d' >> "$report"
  fi
  fenced_tail "$OUT/bench.log" 8
fi

printf '\nTotal %s s.\n' "$(elapsed)" >> "$report"
cat "$report"
