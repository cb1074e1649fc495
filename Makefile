# Two commands on a fresh clone: `make demo` and `make test`. Each creates $(VENV) when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 + torchvision 0.29.1 work together and install from local wheels on the CI machines.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= demo_data
DEMO_OUT ?= output/demo

.PHONY: venv demo test clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[dev]' $(TORCH_PINS)
	touch $@

venv: $(VENV)/.installed

# Demo data -> DiffMAE pretraining -> fine-tuning + multi-view test -> inpainting figures (tools/run_demo.py).
demo: venv
	$(PY) tools/run_demo.py --data $(DEMO_DIR) --out $(DEMO_OUT)

test: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

clean:
	rm -rf output $(DEMO_DIR)
