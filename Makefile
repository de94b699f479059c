# `make demo` trains on the generated sample set; `make test` runs ruff and the test suite.
# Both create .venv with the pinned requirements on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

.PHONY: demo test bench
demo: $(VENV)/.installed
	test -d data/sample || $(PY) data.py sample data/sample
	$(PY) data.py stats "data/sample/Training Data"

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_pairs.py
