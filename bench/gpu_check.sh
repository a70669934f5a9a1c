#!/usr/bin/env bash
# The one command for the GPU machine (H100/H200, no network; its own python3
# with torch and triton): builds the extension with CUDA for sm_90, runs the
# whole test suite on CUDA once per GPU backend (tests/test_cuda.py checks every
# op under torch.cuda.set_sync_debug_mode("error"), CUDA-graph capture and the
# launch counts; tests/test_graph.py the whole-loop graphs), compute-sanitizer
# (memcheck, racecheck) over the CUDA backend's op tests, then benchmarks
# every op x backend against the eager and torch.compile'd reference and the
# device copy bandwidth, the drop-ins against stock diffusers, and whole
# 20-step loops eager against graphed (bench/test_bench_graph.py). It writes one
# markdown report, <date>-<card>.md, into $OUT (the device tool brings it
# back) or build/gpu-check, and ends inside TOTAL_SECONDS (default 520): every
# phase has its own time limit, cut to what is left of the total, and the
# report is written whatever fails. The logs and benchmark JSON go into one
# archive, raw.tar.gz, beside the report (the device tool brings back 8 files).
#
#   bash bench/gpu_check.sh            # build, tests, compute-sanitizer, benchmarks
#   PHASES="build check tests bench" TOTAL_SECONDS=540 bash bench/gpu_check.sh   # and diffaccel check
#   PHASES="build bench" bash bench/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu-check}
RAW="$OUT/raw"  # logs and JSON, archived at the end
mkdir -p "$RAW"
PY=${PYTHON:-python3}
# "check" (diffaccel check --device cuda, 65 s on the H200) is left out by
# default: tests/test_check.py runs it inside the suite.
PHASES=${PHASES:-"build tests sanitize bench"}
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
# limit CAP: a phase's time limit, CAP seconds or what is left of TOTAL_SECONDS
# (less 20 s to write the report), whichever is less; 0 once nothing is left.
limit() {
  local left=$(( ${TOTAL_SECONDS:-520} - 20 - $(elapsed) ))
  (( left < 10 )) && left=0
  echo $(( $1 < left ? $1 : left ))
}

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
# timed CAP LOG CMD...: CMD under `timeout`, its output appended to LOG, when
# time is left; prints the exit status (124: cut by its limit) or "skipped".
timed() {
  local cap; cap=$(limit "$1"); local log=$2; shift 2
  if (( cap == 0 )); then echo "skipped (its limit is 0, or TOTAL_SECONDS is spent)"; return; fi
  timeout "$cap" "$@" >> "$log" 2>&1
  echo "exit $? after $(elapsed) s (limit ${cap} s)"
}

if [[ " $PHASES " == *" build "* ]]; then
  section "Build (setup.py build_ext --inplace, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
  rm -f diffaccel/_C*.so
  # The image sets CC/CXX to wrappers in /opt/gcc; the extension they built
  # carried no libstdc++.so (ldd) and crashed on every C++ error, CPU tensors
  # too, in both H200 runs of 2026-11-27. The system compiler links libstdc++
  # dynamically, as torch does. Build with it where it exists, else the image's.
  echo "image CC=${CC:-} CXX=${CXX:-}; $(file -L /opt/gcc/bin/g++ 2>&1 | cut -c1-120)" >> "$report"
  head -c 400 /opt/gcc/bin/g++ 2>/dev/null | grep -a -v '^\s*$' | head -8 > "$RAW/cxx-wrapper.txt"
  build() {
    # One CPU clone (DIFFACCEL_CPU_CLONES=0): the three-ISA CPU build was the
    # long pole of the 147 s build on 2026-11-27, and CPU speed is not measured here.
    DIFFACCEL_CPU_CLONES=0 timeout $(limit 240) "$@" $PY setup.py build_ext --inplace >> "$RAW/build.log" 2>&1 &&
      $PY -c "from diffaccel import _extension as e; assert e.available()" >> "$RAW/build.log" 2>&1
  }
  if [ -x /usr/bin/g++ ] && build env CC=/usr/bin/gcc CXX=/usr/bin/g++; then
    echo "built with the system compiler (/usr/bin/gcc, /usr/bin/g++)" >> "$report"; status=0
  else
    rm -rf build/temp.* diffaccel/_C*.so
    build env; status=$?
    echo "built with the image's CC/CXX" >> "$report"
  fi
  $PY -c "from diffaccel import _extension as e; print('extension loaded:', e.available(), '| with_cuda:', e._C.with_cuda if e._C else None, '|', e.load_error or '')" >> "$RAW/build.log" 2>&1
  echo "exit $status after $(elapsed) s" >> "$report"
  fenced_tail "$RAW/build.log" 12
  $PY -m diffaccel info >> "$RAW/build.log" 2>&1
  echo '```' >> "$report"; $PY -m diffaccel info >> "$report" 2>&1; echo '```' >> "$report"
  # Does a C++ argument check's throw reach Python (it crashed the process on
  # 2026-11-27)? Each probe should print "ValueError: ...".
  section "Probe: C++ argument errors"
  {
    echo '```'
    echo "c++: $(c++ --version 2>&1 | head -1); /usr/bin/g++: $(/usr/bin/g++ --version 2>&1 | head -1)"
    ls -d /opt/gcc/bin/g++ >/dev/null 2>&1 && echo "/opt/gcc/bin/g++: $(/opt/gcc/bin/g++ --version | head -1)"
    cat "$RAW/cxx-wrapper.txt"
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
    # Where it crashes, if it does: the native stack, when gdb is there.
    if command -v gdb >/dev/null; then
      timeout 60 gdb -q -batch -ex run -ex bt --args $PY -c "
import torch, diffaccel
torch.ops.diffaccel.threshold(torch.randn(2, 3, device='cuda'), 'dynamic', 2.0, 1.0, 'diffusers')
" 2>&1 | grep -E "^#|signal|Error" | head -30
    fi
    echo '```'
  } >> "$report" 2>&1
fi

if [[ " $PHASES " == *" check "* ]]; then
  section "diffaccel check --device cuda"
  echo "$(timed 60 "$RAW/check.log" $PY -m diffaccel check --device cuda)" >> "$report"
  fenced_tail "$RAW/check.log" 30
fi

# test_run BACKEND CAP: the whole suite on CUDA with one GPU backend.
# The suite's files in the order they run (a pytest run cut by its limit has
# then run the ops' and the graphs' tests first); the rest of tests/ after them.
PRIORITY_TESTS="tests/test_cuda.py tests/test_ei_step.py tests/test_threshold.py tests/test_multistep_combine.py
  tests/test_langevin_correct.py tests/test_error_norm.py tests/test_errors.py tests/test_fuzz.py tests/test_transfer.py
  tests/test_graph.py tests/test_graph_pipelines.py tests/test_opcheck_and_compile.py tests/test_autograd.py
  tests/test_diffusers_dpm_solver.py tests/test_diffusers_ddim_ddpm.py tests/test_diffusers_pipelines.py
  tests/test_comfyui.py tests/test_k_diffusion.py tests/test_solvers.py"
# test_run BACKEND CAP: the whole suite on CUDA with one GPU backend. Each
# result is logged as it comes (-v), so a run cut by its limit still names its
# failures; the report lists them, the slowest tests and the last line.
test_run() {
  section "Tests on CUDA, DIFFACCEL_BACKEND=$1"
  local log="$RAW/tests-$1.log" backend_args="TEST_ARGS_$1"
  local args=${!backend_args:-${TEST_ARGS:-$PRIORITY_TESTS tests}}
  DIFFACCEL_FAILURE_LOG="$RAW/failures-$1.log" DIFFACCEL_TEST_DEVICE=cuda DIFFACCEL_BACKEND=$1 timed "$2" "$log" \
    $PY -m pytest $args -v -n 14 -p no:cacheprovider -rfE --durations=8 --timeout=90 >> "$report"
  echo '```' >> "$report"
  grep -oE "(FAILED|ERROR) tests/[^ ]+" "$log" | sort -u | cut -c1-300 | head -80 >> "$report"
  echo "$(grep -cE "(PASSED|XFAIL|XPASS) tests/" "$log") passed, $(grep -oE "(FAILED|ERROR) tests/[^ ]+" "$log" | sort -u | wc -l) failed or errors, $(grep -cE "SKIPPED" "$log") skipped (counted from the progress lines)" >> "$report"
  # The slowest tests, to size the next run's time limit.
  grep -E "^[0-9.]+s (call|setup|teardown) " "$log" | head -8 >> "$report"
  tail -n 1 "$log" >> "$report"
  echo '```' >> "$report"
}

# compute-sanitizer over the op tests of the CUDA backend (the C++ kernels;
# the Triton ones ride along where a test runs every backend): memcheck on the
# fuzzer's cases (odd shapes, layouts, aliasing, NaN) and the multi-block
# selection's large samples, with the caching allocator off so that a read or
# write past a tensor's end leaves its allocation; racecheck (shared memory) on
# the selection and the reductions. A subset sized to fit: each kernel
# launch runs tens of times slower under the tools.
sanitize() {
  local cs
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -1)
  section "compute-sanitizer, DIFFACCEL_BACKEND=cuda"
  if [ -z "$cs" ]; then echo "compute-sanitizer not found" >> "$report"; return; fi
  local large="selection_of_large_samples and float32 and (65536 or 100003) or ei_step_dynamic_threshold_on_large"
  local tool files k
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck}; do
    if [ $tool = memcheck ]; then
      files="tests/test_fuzz.py tests/test_threshold.py"; k="not triton and (not test_threshold.py or $large)"
    else
      files="tests/test_threshold.py tests/test_error_norm.py tests/test_langevin_correct.py"
      k="not triton and (($large) or (test_error_norm.py or test_langevin_correct.py) and float32 and not grad)"
    fi
    local log="$RAW/sanitize-$tool.log"
    echo "- $tool: $(PYTORCH_NO_CUDA_MEMORY_CACHING=1 DIFFACCEL_FUZZ_CASES=${SANITIZE_FUZZ_CASES:-40} \
      DIFFACCEL_TEST_DEVICE=cuda DIFFACCEL_BACKEND=cuda timed ${SANITIZE_SECONDS:-75} "$log" \
      "$cs" --tool $tool --error-exitcode 9 --print-limit 10 $PY -m pytest -q -p no:cacheprovider $files -k "$k")" >> "$report"
    echo '```' >> "$report"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Race reported|Error:|passed|failed" "$log" | head -20 >> "$report"
    echo '```' >> "$report"
  done
}

# Most valuable first, so that a run cut by TOTAL_SECONDS loses the least:
# the CUDA backend's tests, compute-sanitizer, the kernels' and the graphed
# loops' numbers, the Triton backend's tests, the torch.compile baseline, then
# the drop-ins' numbers. TEST_BACKENDS picks the suite's backends, TEST_ARGS
# what it runs (a second run can take the first one's failures only), and
# TEST_ARGS_cuda / TEST_ARGS_triton that for one backend; BENCH_K selects the
# kernel benchmarks (pytest -k), and a phase's *_SECONDS=0 skips it.
run_tests() { [[ " $PHASES " == *" tests "* && " ${TEST_BACKENDS:-cuda triton} " == *" $1 "* ]]; }
run_tests cuda && test_run cuda ${TEST_SECONDS:-130}
[[ " $PHASES " == *" sanitize "* ]] && sanitize

if [[ " $PHASES " == *" bench "* ]]; then
  section "Benchmarks"
  echo "- kernels, eager, copy, torch.quantile: $(timed ${BENCH_SECONDS:-90} "$RAW/bench.log" \
    $PY -m pytest bench/test_bench_gpu.py -q -p no:cacheprovider --benchmark-only \
    -k "${BENCH_K:-not compiled_reference}" --benchmark-json="$RAW/bench-gpu.json")" >> "$report"
  # Whole loops with a network: stock diffusers, eager, one CUDA graph (diffaccel.graph).
  # And the Brownian tree on the GPU (ComfyUI's *_gpu samplers' noise): torchsde's against diffaccel's.
  echo "- graphed loops, Brownian tree, gradients: $(DIFFACCEL_BENCH_DEVICE=cuda timed ${GRAPH_BENCH_SECONDS:-90} "$RAW/bench.log" \
    $PY -m pytest bench/test_bench_graph.py bench/test_bench_brownian.py bench/test_bench_autograd.py -q -p no:cacheprovider --benchmark-only \
    --benchmark-json="$RAW/bench-gpu-graph.json")" >> "$report"
fi

run_tests triton && test_run triton ${TEST_SECONDS:-130}

if [[ " $PHASES " == *" bench "* ]]; then
  # torch.compile of the reference at the largest size, fp32: one compilation
  # per case (both H200 runs of 2026-11-27 ran out of time before it).
  echo "- torch.compile of the reference: $(timed ${COMPILE_BENCH_SECONDS:-120} "$RAW/bench.log" \
    $PY -m pytest bench/test_bench_gpu.py -q -p no:cacheprovider --benchmark-only \
    -k "${COMPILE_BENCH_K:-compiled_reference and xlarge and fp32}" --benchmark-json="$RAW/bench-gpu-compiled.json")" >> "$report"
  # diffusers is not on the GPU image: the drop-in bench runs where it is carried.
  if $PY -c "import diffusers" 2>/dev/null; then
    echo "- diffusers drop-ins: $(DIFFACCEL_BENCH_DEVICE=cuda timed ${DIFFUSERS_BENCH_SECONDS:-50} "$RAW/bench.log" \
      $PY -m pytest bench/test_bench_diffusers.py -q -p no:cacheprovider --benchmark-only -k "not step_host" \
      --benchmark-json="$RAW/bench-gpu-diffusers.json")" >> "$report"
    # Each drop-in's host time per step at a tiny latent (an eager loop's cost on a GPU), last
    # and apart, so that a run cut here loses only these numbers.
    echo "- drop-in host time per step: $(DIFFACCEL_BENCH_DEVICE=cuda timed ${HOST_BENCH_SECONDS:-40} "$RAW/bench.log" \
      $PY -m pytest bench/test_bench_diffusers.py -q -p no:cacheprovider --benchmark-only -k step_host \
      --benchmark-json="$RAW/bench-gpu-host.json")" >> "$report"
  else
    echo "- diffusers drop-ins: skipped (diffusers not importable; carry its wheel, see the device README)" >> "$report"
  fi
  jsons=$(ls "$RAW"/bench-gpu*.json 2>/dev/null)
  if [ -n "$jsons" ]; then
    $PY bench/report.py $jsons 2>&1 | sed '1,2d' >> "$report"
  fi
  fenced_tail "$RAW/bench.log" 8
fi

printf '\nTotal %s s.\n' "$(elapsed)" >> "$report"
tar czf "$OUT/raw.tar.gz" -C "$RAW" . && rm -r "$RAW"
cat "$report"
