# Two entry points, each doing all of its own set-up (idempotent, fast when done):
#   make demo   - create .venv, install pinned requirements, build the extension, run `fcn demo`
#   make test   - same set-up, then the whole test suite (pytest)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Compile the CUDA kernels whenever a toolkit is present (no GPU needed to build).
export CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export MAX_JOBS ?= 2

SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h') setup.py pyproject.toml
DEPS    := $(VENV)/.deps-installed
BUILT   := $(VENV)/.ext-built
EXT     := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
SO      := fcn_kernels/_C$(EXT)

.PHONY: demo test bench build deps clean gpu-check gpu-check-rehearse sass lint format
demo: build
	$(VENV)/bin/fcn demo $(ARGS)

test: build
	$(PY) -m pytest $(ARGS)

bench: build
	$(PY) -m benches.report $(ARGS)

# On a lent GPU machine (its own python3 with torch; no package index): build for the
# visible GPU (CUDA required), CUDA tests, sanitizers, sync and graph checks, CUDA
# benchmarks and the alternatives' timings -> $(OUT). Within 540 s (--budget).
OUT ?= out/gpu-check
gpu-check:
	$(PYTHON) -m benches.gpu_check $(OUT)

# The same script on this machine (no GPU), as CI runs it: a cached venv with the GPU
# machine's torch, a copy of the tree, the GPU steps against the emulated device.
gpu-check-rehearse:
	$(PYTHON) -m benches.gpu_check --rehearse $(OUT)-rehearsal

# Per-kernel SASS statistics of the built extension (no GPU needed); fails on spills
# and on FP64/CALL instructions in float/half/bfloat16 kernels.
sass: build
	$(PY) -m benches.sass --check

CXX_SOURCES = $(shell find csrc -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh')
lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CXX_SOURCES)

format: deps
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

build: deps
	@if [ ! -f $(SO) ] || [ ! -f $(BUILT) ] || [ -n "$$(find $(SOURCES) -newer $(BUILT))" ]; then \
	  echo "building fcn_kernels extension (CUDA_HOME=$${CUDA_HOME:-none})"; \
	  $(PY) -m pip install -q --no-build-isolation --no-deps -e . && touch $(BUILT); \
	fi

deps: $(DEPS)
$(DEPS): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

clean:
	rm -rf build *.egg-info $(SO) $(BUILT)
