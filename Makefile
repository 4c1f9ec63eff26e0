# One command for the main job, one for the tests; each creates .venv if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared

.PHONY: demo test lint bench-vae clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Main job: cats and dogs (grids, denoising GIFs, denoising path) from the shipped weights, on CPU.
demo: $(VENV)/.installed
	$(PY) -m catdog.demo

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench main.py generate.py
	$(VENV)/bin/ruff format --check src tests bench main.py generate.py

bench-vae: $(VENV)/.installed
	$(PY) bench/bench_vae.py --data-dir $(SHARED)/data/catdog96 --vgg-weights $(SHARED)/weights/vgg16_features_imagenet1k_v1.pth

clean:
	rm -rf $(VENV) results demo
