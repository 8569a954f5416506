# The two set-up commands of the README:
#   make demo   create/refresh .venv, generate synthetic data, train, evaluate, print Dice, write a PNG overlay
#   make test   create/refresh .venv and run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ssmis-installed
DEMO_DIR ?= demo

.PHONY: demo test venv clean-demo

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -c "import monailabel.main, pydicom_seg, ssmis; print('environment ready:', ssmis.__version__)"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) -m ssmis.demo --output $(DEMO_DIR)

test: venv
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf $(DEMO_DIR)
