# make demo: what diffaccel does on this machine. make test: the whole test suite.
# Both work from a fresh clone: they make a virtual environment in .venv that
# sees the system's packages (so a CUDA build of torch already installed is
# reused), install torch==2.13.0 (the CPU build) only when no torch imports,
# then build and install diffaccel with its test extra, without build
# isolation so the extension is compiled against the torch that will run it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.diffaccel-installed
SOURCES := $(wildcard csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/include/diffaccel/*.h) setup.py pyproject.toml
CUDA_SOURCES := $(wildcard csrc/cuda/*.cu)
NVCC ?= $(shell command -v nvcc 2>/dev/null)
CUDA_INCLUDE ?= $(firstword $(wildcard $(CUDA_HOME)/include/cuda_runtime_api.h /usr/local/cuda/include/cuda_runtime_api.h $(dir $(NVCC))../include/cuda_runtime_api.h))
CUDA_INCLUDE := $(patsubst %/,%,$(dir $(CUDA_INCLUDE)))
# pytest-benchmark output is kept under build/; benchmarks need stable malloc (DESIGN.md).
BENCH_ENV := MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=134217728

LINT_STAMP := $(VENV)/.diffaccel-lint-tools
# Pinned so a new release cannot turn a clean tree red: ruff (Python lint and format)
# and clang-format (csrc), both from PyPI wheels; configured in pyproject.toml / .clang-format.
LINT_TOOLS := ruff==0.17.6 clang-format==23.1.5
CSRC_FILES = $(shell git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh' 2>/dev/null || find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

.PHONY: demo test suite lint format sanitize sanitize-build bench install cuda-compile-check cmake-check clean

demo: $(STAMP)
	$(PY) -m diffaccel info
	$(PY) -m diffaccel demo --out demo-out
	$(BENCH_ENV) $(PY) -m diffaccel bench

# lint first (seconds, before the build); then the suite, and beside it, on the other core
# (the suite is one Python process), the CUDA compile check and the sanitizer build, each
# target's output printed when it ends; then the sanitizer job's tests.
test: lint $(STAMP)
	$(MAKE) --no-print-directory --jobs=2 --output-sync=target suite cuda-compile-check sanitize-build MAX_JOBS=1
	$(MAKE) --no-print-directory sanitize

# TRITON_INTERPRET=1: the Triton kernels run on CPU tensors (tests/test_triton.py); then a
# pass without it compiles every Triton kernel for sm_90 (tests/test_triton_compile.py).
suite: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest tests --durations=25
	$(PY) -m pytest tests/test_triton_compile.py

# The CPU kernels built with AddressSanitizer + UndefinedBehaviorSanitizer (one
# baseline clone, -O1) into build/sanitize, beside the normal build, and the op
# tests and the fuzzer run against that build; any report aborts the run.
SANITIZE_DIR := build/sanitize
SANITIZE_TESTS := tests/test_ei_step.py tests/test_multistep_combine.py tests/test_threshold.py \
	tests/test_langevin_correct.py tests/test_error_norm.py tests/test_errors.py tests/test_fuzz.py
SANITIZE_RUNTIME = $(shell g++ -print-file-name=libasan.so) $(shell g++ -print-file-name=libubsan.so)
# (MAX_JOBS: how many compiles at once, torch's extension builder's setting; unset, all cores.)
sanitize-build: $(STAMP)
	DIFFACCEL_SANITIZE=1 DIFFACCEL_CPU_CLONES=0 DIFFACCEL_NO_CUDA=1 $(PY) setup.py -q build_ext \
		--build-lib $(SANITIZE_DIR)/lib --build-temp $(SANITIZE_DIR)/temp
	@rm -rf $(SANITIZE_DIR)/pkg && mkdir -p $(SANITIZE_DIR)/pkg
	@cp -r diffaccel $(SANITIZE_DIR)/pkg/ && rm -f $(SANITIZE_DIR)/pkg/diffaccel/_C*.so
	@cp $(SANITIZE_DIR)/lib/diffaccel/_C*.so $(SANITIZE_DIR)/pkg/diffaccel/

sanitize: sanitize-build
	@# Python and torch are not instrumented: their leaks and allocator are not ours to report.
	@# (python -P: the checkout is not put first on sys.path, so the sanitized copy is imported.)
	@# Reports go to files (pytest captures stderr, and an abort loses it); printed on failure.
	@rm -f $(SANITIZE_DIR)/report.*
	LD_PRELOAD="$(SANITIZE_RUNTIME)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:log_path=$(SANITIZE_DIR)/report \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$(SANITIZE_DIR)/report PYTHONPATH=$(SANITIZE_DIR)/pkg \
		DIFFACCEL_EXPECT_EXTENSION=$(SANITIZE_DIR)/pkg/diffaccel $(PY) -P -m pytest -q -p no:cacheprovider \
		$(SANITIZE_TESTS) || { cat $(SANITIZE_DIR)/report.* 2>/dev/null; exit 1; }
	@if ls $(SANITIZE_DIR)/report.* >/dev/null 2>&1; then cat $(SANITIZE_DIR)/report.*; exit 1; fi

# pytest-benchmark of every op vs the eager and compiled reference and the copy
# and triad bandwidth; the markdown report lands in bench/results/<date>-cpu.md.
# make bench BEFORE=<commit>: the op benchmarks of <commit> run first
# (bench/compare.sh) and shown beside this run's.
bench: $(STAMP)
	@mkdir -p build bench/results
	$(if $(BEFORE),bash bench/compare.sh $(BEFORE))
	$(BENCH_ENV) $(PY) -m pytest bench -q --benchmark-only --benchmark-json=build/bench-cpu.json --benchmark-columns=median,rounds
	$(PY) bench/report.py build/bench-cpu.json $(if $(BEFORE),--before build/bench-before.json) > bench/results/$$(date +%F)-cpu.md
	@cat bench/results/$$(date +%F)-cpu.md

install: $(STAMP)

# The tree must be lint-clean and formatted; `make format` rewrites it so.
lint: $(LINT_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CSRC_FILES)

format: $(LINT_STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CSRC_FILES)

$(LINT_STAMP): $(PY)
	$(PY) -m pip install $(LINT_TOOLS)
	@touch $(LINT_STAMP)

$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(STAMP): $(PY) $(SOURCES)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	@# Triton 3.6, the GPU machine's, for the Triton kernels' interpreter tests.
	@$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install triton==3.6.0
	@# k-diffusion's sampling module and what it imports, to test the drop-in against
	@# the real package (--no-deps: its __init__'s training dependencies are not needed).
	@# matplotlib, for the demo's plot.
	@$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install matplotlib
	@# diffusers, to test the scheduler drop-ins against the real package.
	@$(PY) -c "import diffusers" 2>/dev/null || $(PY) -m pip install diffusers==0.42.1
	@$(PY) -c "import scipy" 2>/dev/null || $(PY) -m pip install scipy
	@# transformers: diffusers' pipeline modules import it (their text encoders' classes), so
	@# the pipeline tests can build FluxPipeline, SD3, Wan, ... with the encoders left out.
	@$(PY) -c "import transformers" 2>/dev/null || $(PY) -m pip install transformers==5.23.0
	@$(PY) -c "import importlib.util as u, sys; sys.exit(u.find_spec('k_diffusion') is None)" || \
		$(PY) -m pip install --no-deps k-diffusion==0.1.1.post1 torchsde==0.2.6 torchdiffeq==0.2.5 trampoline==0.1.2 tqdm
	$(PY) -m pip install --no-build-isolation -e ".[test]"
	@touch $(STAMP)

# Compile-only check of the CUDA kernels: object files, no linking, so it runs
# on a machine whose torch has no CUDA (the .cu files include no torch header).
cuda-compile-check: $(STAMP)
ifeq ($(strip $(NVCC)),)
	@echo "cuda-compile-check: nvcc not found, skipped"
else ifeq ($(strip $(CUDA_SOURCES)),)
	@echo "cuda-compile-check: no csrc/cuda/*.cu files yet"
else
	@mkdir -p build/cuda-check/stub/c10/cuda/impl
	@for f in $(CUDA_SOURCES); do \
		echo "nvcc -c $$f"; \
		$(NVCC) -std=c++17 -O3 --expt-relaxed-constexpr --fmad=false -Icsrc/include -gencode=arch=compute_90,code=sm_90 -Xptxas -v \
			-c $$f -o build/cuda-check/$$(basename $$f .cu).o 2> build/cuda-check/$$(basename $$f .cu).ptxas.txt \
			|| { cat build/cuda-check/$$(basename $$f .cu).ptxas.txt; exit 1; }; \
	done
	@# No float32 kernel may keep data in local memory (the compiler's report).
	$(PY) scripts/check_cuda_resources.py build/cuda-check/*.ptxas.txt
	@# The CUDA bindings of csrc/torch: a syntax check against this torch's headers
	@# (the CPU wheel lacks one generated CUDA header; a stub stands in for it).
	@echo "#define C10_CUDA_BUILD_SHARED_LIBS" > build/cuda-check/stub/c10/cuda/impl/cuda_cmake_macros.h
	@for f in csrc/torch/*.cpp; do \
		echo "g++ -fsyntax-only -DDIFFACCEL_WITH_CUDA $$f"; \
		g++ -std=c++20 -fsyntax-only -DDIFFACCEL_WITH_CUDA \
			$$($(PY) -c "import sysconfig, torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths() + [sysconfig.get_paths()['include']]))") \
			-Ibuild/cuda-check/stub -I$(CUDA_INCLUDE) -Icsrc/include $$f || exit 1; \
	done
endif

# Builds the op library against libtorch with CMake (for C++ users).
cmake-check: $(STAMP)
	cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" -DCMAKE_BUILD_TYPE=Release
	cmake --build build/cmake -j2

clean:
	rm -rf build $(VENV) diffaccel/*.so *.egg-info
