# Two commands on a fresh machine (each installs what it needs into .venv first):
#   make demo   the main job: the shipped CIFAR-10 encoder (models/cifar10), index the CIFAR-10 test
#               images with FAISS, serve search over HTTP on http://127.0.0.1:8000
#   make test   the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Data sets are read from here (torchvision layouts); ../shared/data beside the checkout by default.
export INFOMAX_DATA_DIR ?= $(abspath ../shared/data)
# Torch's threads: both cores of the 2-core machines this is tested on, no oversubscription.
export OMP_NUM_THREADS ?= 2

.PHONY: install browser demo test bench docker-e2e clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	bash scripts/demo.sh

# The web page's test drives Debian's headless Chromium: install it when it is missing (needs root).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

# Lint, format and types first: a finding fails the run before the tests start (`ruff format .`
# fixes the format). mypy checks every module of infomax, service and training (pyproject.toml).
test: install browser
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest -q

bench: install
	$(PY) bench/train_throughput.py

docker-e2e: install
	bash scripts/docker-e2e.sh

clean:
	rm -rf runs artifacts .pytest_cache
