# pigg: `make demo` runs the whole embedded demo, `make test` runs lint + tests.
# Both create .venv and install pinned dependencies first; nothing needs installing by hand.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# CPU wheel here; on a GPU machine keep the CUDA torch you have: `make setup TORCH_SPEC=` skips it
# when torch is already importable in the venv (e.g. a venv made with --system-site-packages).
TORCH_SPEC ?= torch==2.13.0
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo demo-text demo-grpo test browser slurm fuzz soak lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

demo: setup
	$(BIN)/pigg demo --out demo_out

# seed 004 in miniature: a tiny Qwen2.5 classifying synthetic news, base vs tuned (~3 min on 2 cores)
demo-text: setup
	$(BIN)/pigg demo text --out demo_text_out

# click-reward RL after SFT: zero-shot vs SFT vs SFT+GRPO on held-out users (~6 min on 2 cores)
demo-grpo: setup
	$(BIN)/pigg demo grpo --out demo_grpo_out

# deptry: every import in src/pigg is declared in pyproject.toml (a dependency, or an extra whose absence
# src/pigg/extras.py turns into one line); lint-imports: no import runs up the layers pyproject names
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/deptry src
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

# the serving page's test drives Debian's chromium (Playwright, no browser download); it is installed here
# where apt-get can, and that test skips with the reason where it cannot
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium not installed: the browser test will skip"

test: lint browser
	$(BIN)/python -m pytest -q

# `pigg sbatch` on a real SLURM: Debian's slurm-wlm and munge, installed here where apt-get can (a
# single-node cluster is started and stopped by the test, in its own folder); skips with the reason elsewhere.
# Its own target, as SLURM's 30 s time-limit checks and requeue hold make it ~3 minutes.
slurm: setup
	@command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) ; } || \
	  echo "slurm-wlm or munge not installed: the SLURM tests will skip"
	$(BIN)/python -m pytest -q -m slurm tests/test_slurm.py

# the readers' and the serving API's property-based fuzzing at length (2,000 examples a property instead
# of test's 40; the API's against a live pigg serve)
fuzz: setup
	$(BIN)/python -m pytest -q tests/test_fuzz_data.py tests/test_serve.py -k fuzz --hypothesis-profile=fuzz \
	  --hypothesis-show-statistics

# the stop tests (signals, Ctrl-C, time limit, SLURM script) and the distributed ones, SOAK times in a row
# each; `make soak HOG=1` runs them beside a busy loop on every core, as a loaded machine would
SOAK ?= 30
STOP_TESTS = tests/test_distributed.py tests/test_run_control.py tests/test_plan.py tests/test_rl.py
soak: setup
	@hogs=""; if [ -n "$(HOG)" ]; then for i in $$(seq $$(nproc)); do \
	  timeout 3h $(BIN)/python -c "while True: pass" & hogs="$$hogs $$!"; done; fi; \
	$(BIN)/python -m pytest -q $(STOP_TESTS) --count $(SOAK) -x \
	  -k "test_distributed or stopped_and_resumed or killed_midway or time_limit or sigterm or sbatch \
	     or start_that_fails or while_the_model or two_rank_grpo"; \
	code=$$?; [ -z "$$hogs" ] || kill $$hogs; exit $$code

clean:
	rm -rf $(VENV) demo_out demo_text_out demo_grpo_out runs logs
