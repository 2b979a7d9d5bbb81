# `make test` and `make demo` bootstrap .venv from pyproject.toml; re-installing only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml tests/beam-requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	$(VENV)/bin/python -m pip install --quiet --no-deps -r tests/beam-requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(VENV)/bin/pulse-jax demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
