# Two commands matter: `make repro` (set up, then run the study on the active preset) and `make test`.
# The virtual environment is created on first use from requirements.lock (exact versions).
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV)/bin)
STAMP := $(VENV)/.installed
PRESET ?= tiny
export PATH := $(BIN):$(PATH)

.PHONY: setup repro test browser preset plan lab lock bench

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP)

# Validate the params (one-line error before any stage), then run every stage that is out of date.
repro: $(STAMP)
	optsweep plan --params params/study.yaml
	dvc repro
	@echo "report: reports/index.html"

# The report test drives headless Chromium; install it from the distribution packages when missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: $(STAMP) browser
	ruff check lib tests notebooks bench
	python -m pytest -q

# Switch the active params/study.yaml to a preset: make preset PRESET=micro|tiny|paper|optimizers|fantastic
preset: $(STAMP)
	optsweep preset $(PRESET)

plan: $(STAMP)
	optsweep plan --params params/study.yaml

# JupyterLab on the whole project: notebooks/ (open a jupytext .py as a notebook; explore.py to dig into
# the results), their executed copies in build/notebooks/, results/ and reports/. Notebooks find the project
# root from whichever folder their kernel starts in.
lab: $(STAMP)
	jupyter lab --notebook-dir=.

bench: $(STAMP)
	optsweep bench --params params/study.yaml

lock: $(STAMP)
	(head -n 2 requirements.lock; pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/' | grep -v '^optsweep') > requirements.lock.new
	mv requirements.lock.new requirements.lock
