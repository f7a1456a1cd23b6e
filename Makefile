# Common tasks. Override the environment with `make VENV=/path/to/venv ...`.

VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
PYTEST_ARGS ?=
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

# Reinstall only when the package metadata, the pins or the set of top-level packages change.
STAMP := $(VENV)/.hwnas-installed
INSTALL_INPUTS := setup.cfg pyproject.toml constraints.txt \
	$(wildcard supernet/__init__.py nas/__init__.py costmodels/__init__.py deploy/__init__.py)

.PHONY: install data quickstart test lint

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(VENV)/bin/python $(INSTALL_INPUTS)
	$(VENV)/bin/python -m pip install -c constraints.txt -e '.[dev]'
	$(VENV)/bin/python -m pip install -c constraints.txt --no-deps sweeps
	-$(VENV)/bin/python -m supernet.native --build
	touch $@

data:
	@if [ -d $(FASHION_MNIST_DIR) ]; then \
		echo "Fashion-MNIST found in $(FASHION_MNIST_DIR)"; \
	else \
		$(APT_GET) install -y dataset-fashion-mnist || \
		{ $(APT_GET) update && $(APT_GET) install -y dataset-fashion-mnist; }; \
	fi

quickstart: install data
	$(VENV)/bin/hwnas quickstart

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
