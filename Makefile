# Two commands do all the set-up on a fresh machine:
#   make train   create .venv, install sparseae, train the MNIST model (3 epochs, seed 0)
#   make test    create .venv, install sparseae with test tools, run every test
# and, not part of CI:
#   make test-loaded   the same tests while two busy loops hold both cores (a loaded CI machine)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EPOCHS ?= 3
# Any seed: the default recipe keeps every code unit alive (seed 0 loses 27 of 32 under --recipe keras, as in Keras).
SEED   ?= 0

.PHONY: train test test-loaded lint clean chromium bench

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/sparseae train --epochs $(EPOCHS) --seed $(SEED)

test: $(STAMP) chromium
	$(BIN)/ruff check src tests benchmarks examples docs/hooks
	$(BIN)/python -m pytest

# The suite on a loaded machine: LOAD busy loops (default 2, one per core here) run beside the
# same pytest command, about 25 minutes on 2 cores; the trap ends them however pytest ends (pass,
# fail, Ctrl-C). No test may fail for being slow: they wait for states, not for time.
# PYTEST_ARGS narrows the run, e.g.
#   make test-loaded PYTEST_ARGS='tests/training/test_robustness.py -k sigkill'
LOAD ?= 2
PYTEST_ARGS ?=
test-loaded: $(STAMP) chromium
	@pids=; trap 'kill $$pids 2>/dev/null' EXIT; trap 'exit 130' INT TERM; \
	for i in $$(seq $(LOAD)); do $(PYTHON) -c 'while True: pass' 2>/dev/null & pids="$$pids $$!"; done; \
	echo "test-loaded: $(LOAD) busy loops (pids$$pids) beside pytest"; \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The browser test drives Debian's chromium through chromedriver. As root with
# apt-get (CI, these project machines) it is installed here; elsewhere install
# it yourself, or the browser test is skipped with a message.
chromium:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "chromium/chromedriver not found: the browser test will be skipped"; fi

# The speed suite: sparseae against Keras, plain PyTorch, sparsify and SAELens, each in its own
# environment (installed by the suite), contenders alternated; about 40 minutes on 2 cores.
# Writes benchmarks/results/speed.{json,md}. Run it on an otherwise idle machine.
bench:
	$(PYTHON) benchmarks/speed/suite.py
	$(PYTHON) benchmarks/real/run.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples docs/hooks
	$(BIN)/ruff format --check src tests benchmarks examples docs/hooks

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
