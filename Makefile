# The two set-up commands of the README. Each creates .venv (if needed), installs everything, and runs.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -m "not slow and not gpu" -q --durations=15

.PHONY: run test lint bench clean

run:  ## install and run the main job on its embedded defaults
	@bash scripts/setup.sh
	$(VENV)/bin/lotsim train

test:  ## install (with dev extras) and run the default test suite
	@bash scripts/setup.sh dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

bench:  ## slow physics checks and benchmarks
	@bash scripts/setup.sh dev
	$(PY) -m pytest -m slow -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
