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

demo: venv
	$(PY) tools/make_demo_data.py --out $(DEMO_DIR)
	$(PY) tools/run_net.py --cfg configs/demo/vit_tiny_supervised.yaml DATA.PATH_TO_DATA_DIR $(DEMO_DIR) OUTPUT_DIR $(DEMO_OUT)

test: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

clean:
	rm -rf output $(DEMO_DIR)
