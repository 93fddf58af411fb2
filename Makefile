# Two commands do everything on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv, installs torch 2.13.0 first (a CPU build from local disk here; an
# unpinned torch would pull a multi-GB CUDA build), then this package with its dev and serve extras
# and the tritonserver binary of the nvidia-pytriton wheel.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# The real TensorRT Python bindings (no libraries: those cannot install here), for the tests in
# tests/trt_bindings that check the project's TensorRT calls against each version. Best effort:
# without them those tests skip.
TRT_BINDINGS ?= 10.3.0 10.13.3.9 11.4.0.106
PYTRITON_VERSION ?= 0.7.0

.PHONY: demo test setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[dev,serve]"
	# Triton Inference Server: the tritonserver binary of the nvidia-pytriton wheel (glibc >= 2.35), unpacked
	# without its dependencies (numpy < 2), and the numpy-1.26 environment its Python-backend stubs need.
	$(PY) -m pip install -q --upgrade --no-deps --target $(VENV)/tritonserver nvidia-pytriton==$(PYTRITON_VERSION)
	$(PY) -c "from tqdit_export.serving.server import make_stub_environment; make_stub_environment()"
	for v in $(TRT_BINDINGS); do $(PY) -m pip download -q --no-deps -d $(VENV)/trt-wheels \
		"tensorrt-cu12-bindings==$$v" || echo "note: tensorrt-cu12-bindings $$v not downloaded; its tests skip"; done
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tqdit demo --model dit-digits --bits W8A8 --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out
