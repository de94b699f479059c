# `make demo`: generate the sample set, train the improved recipe on it (improved.yaml: EfficientNet-Lite0, ImageNet
# weights that install offline),
# evaluate the checkpoint beside the reference methods, and find the duplicates of the test photos with it
# (duplicates-model.html) and with the default method, calibrated (duplicates.html).
# `make test`: ruff and the test suite (what CI runs); `make check`: the fast tests only. Each creates .venv with the
# pinned requirements and the package (editable) first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
SAMPLE := data/sample
DEMO := data/demo

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .  # the samespace command in $(VENV)/bin
	touch $@

REAL := data/real

.PHONY: demo test check test-python bench default-model browser gpu-kit
demo: $(VENV)/.installed
	mkdir -p $(DEMO)
	$(PY) model_def.py --sample-data $(SAMPLE) --config improved.yaml \
		--checkpoint-dir checkpoints | tee $(DEMO)/train.log
	ckpt=$$(tail -n 1 $(DEMO)/train.log) && \
	$(PY) model_inference.py --checkpoint "$$ckpt" --data-dir "$(SAMPLE)/Test Data" \
		--json $(DEMO)/evaluation.json --plots $(DEMO)/plots --scores $(DEMO)/scores.csv --write-threshold && \
	$(VENV)/bin/samespace find "$(SAMPLE)/Test Data" --checkpoint "$$ckpt" \
		--json $(DEMO)/duplicates-model.json --html $(DEMO)/duplicates-model.html
	$(VENV)/bin/samespace find "$(SAMPLE)/Test Data" --json $(DEMO)/duplicates.json --html $(DEMO)/duplicates.html

# The review page's browser test drives Debian's Chromium (Playwright, pinned in requirements-dev.txt, never
# downloads a browser): installed with apt-get when it is missing (CI runs as root; else through sudo).
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver; }

test: $(VENV)/.installed browser
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The fast tests only (no training runs, no multi-process runs, no full-set calibrations): a check while working.
check: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow"

# The suite on another Python, e.g. a cluster image's 3.10: `make test-python PYTHON=python3.10`. It installs the
# package's ranges (pip picks releases for that Python), not requirements-dev.txt's pins, which need 3.11 or later.
PYTHON ?= python3
OTHER_VENV := .venv-python
test-python: browser
	rm -rf $(OTHER_VENV)
	$(PYTHON) -m venv $(OTHER_VENV)
	$(OTHER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OTHER_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	$(OTHER_VENV)/bin/python -m ruff check .
	$(OTHER_VENV)/bin/python -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_pairs.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_extraction.py
	$(PY) benchmarks/bench_find_duplicates.py
	$(PY) benchmarks/bench_quality.py --dataset sample
	$(PY) benchmarks/bench_huge_pages.py

# The shipped default model of find_duplicates.py (default_model.pt / .json): the improved recipe trained on the
# real-photo development set's Training Data, its threshold calibrated on that same training split.
default-model: $(VENV)/.installed
	test -d "$(REAL)/Training Data" || $(PY) -m samespace devset build $(REAL)
	mkdir -p checkpoints
	$(PY) model_def.py --data-dir $(REAL) --config improved.yaml --checkpoint-dir checkpoints \
		| tee checkpoints/default-model.log
	$(PY) -m samespace.default_model export --checkpoint "$$(tail -n 1 checkpoints/default-model.log)" \
		--calibrate-on "$(REAL)/Training Data"

# Wheels for a CUDA machine without a package index (benchmarks/gpu_check.sh installs them there): what its image
# lacks (benchmarks/gpu-kit.txt), for its Python (GPU_PYTHON) on x86-64 Linux.
GPU_PYTHON ?= 3.12
gpu-kit:
	rm -rf .whl && mkdir .whl
	python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl -r benchmarks/gpu-kit.txt
	du -sh .whl
