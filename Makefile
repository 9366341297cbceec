# The README's two commands: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ARCH   := $(shell uname -m)
# torch/torchvision releases that install from local files on this kind of machine.
ifeq ($(ARCH),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) tools/demo.py

# Tests run on every core (pytest-xdist), one torch thread per worker: the small models of the
# tests gain nothing from threads, and processes do not wait for each other.
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --durations=10

bench: install
	$(PY) benchmarks/distill_step.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
