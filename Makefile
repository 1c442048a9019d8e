# The two things a newcomer runs: `make demo` (set up, then a live demo) and `make test`
# (set up, then the whole test suite). Both build their own virtualenv in .venv from
# pyproject.toml the first time.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: setup test demo bench bench-sim bench-relay

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# The PostgreSQL half of the store tests uses the server at QQBRIDGE_TEST_POSTGRES_URL
# (default postgresql://postgres@127.0.0.1:5432/postgres) and is skipped, saying so,
# when none answers there. The suite runs on TEST_WORKERS pytest-xdist workers (most of
# it waits on timers, not the CPU), each file on one worker (tests/conftest.py);
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 4
test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

# The performance table of issue 11 in one run (about 9 minutes; BENCH_ARGS=--quick for about 5),
# against a real Synapse and the simulator at time scale 1; writes docs/performance.md.
bench: setup
	$(PY) bench/run_all.py $(BENCH_ARGS)

bench-sim: setup
	$(PY) bench/sim_rps.py

bench-relay: setup
	$(PY) bench/bridge_relay.py

# A working bridge to try from Element: the QQ simulator with scripted friends, a local
# Synapse and the bridge, all on loopback; it prints what to type. Ctrl-C stops it.
# Options go in DEMO_ARGS, e.g. `make demo DEMO_ARGS="--hs-port 8448"`.
demo: setup
	$(PY) -m qqbridge demo $(DEMO_ARGS)
