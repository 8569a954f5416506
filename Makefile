# The two set-up commands of the README:
#   make demo   create/refresh .venv, generate synthetic data, train, evaluate, print Dice, write a PNG overlay
#   make test   create/refresh .venv and run the whole test suite in TEST_WORKERS processes (default 2, one per core
#               of the reference machine; the 15 slowest tests are listed at the end)
#   make test-fast   the same without the tests marked slow (servers, trainings, process groups), for the edit loop
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ssmis-installed
DEMO_DIR ?= demo
TEST_WORKERS ?= 2

.PHONY: demo test test-fast venv clean-demo

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[app,dev]"
	$(PY) -c "import monailabel.main, pydicom_seg, ssmis; print('environment ready:', ssmis.__version__)"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) -m ssmis.demo --output $(DEMO_DIR)

test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15 tests

test-fast: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" tests

clean-demo:
	rm -rf $(DEMO_DIR)
