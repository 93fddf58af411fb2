# Two commands do everything on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv, installs torch 2.13.0 first (a CPU build from local disk here; an
# unpinned torch would pull a multi-GB CUDA build), then this package with its dev extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

.PHONY: demo test setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tqdit sample --model dit-digits --steps 100 --cfg 1.5 --num 100 --seed 0 \
		--out out/demo_grid.png --save-npz out/demo_samples.npz
	$(VENV)/bin/tqdit eval --samples out/demo_samples.npz --json out/demo_eval.json

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out
