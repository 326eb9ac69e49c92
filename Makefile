# Two commands on a fresh machine (each installs what it needs into .venv first):
#   make demo   the main job: train an encoder (short run), then what the later stages add
#   make test   the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Data sets are read from here (torchvision layouts); ../shared/data beside the checkout by default.
export INFOMAX_DATA_DIR ?= $(abspath ../shared/data)
# Torch's threads: both cores of the 2-core machines this is tested on, no oversubscription.
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/infomax train --config training/configs/cifar10.yaml \
	    --data.limit_train 5000 --trainer.max_epochs 2 \
	    --export.dirpath artifacts/demo-cifar10
	@echo "serving artifact: artifacts/demo-cifar10 (load it with infomax.load_encoder)"

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) bench/train_throughput.py

clean:
	rm -rf runs artifacts .pytest_cache
