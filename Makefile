# Two commands matter: `make repro` (set up, then run the study on the active preset) and `make test`.
# The virtual environment is created on first use from requirements.lock (exact versions).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= tiny

.PHONY: setup repro test preset lab lock bench clean-results

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP)

repro: $(STAMP)
	$(BIN)/optsweep train --params params/study.yaml --scale $$($(BIN)/python -c "import yaml; print(next(iter(yaml.safe_load(open('params/study.yaml'))['scales'])))")

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Switch the active params/study.yaml to a preset: make preset PRESET=micro|tiny|paper
preset: $(STAMP)
	$(BIN)/optsweep preset $(PRESET)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP)
	$(BIN)/optsweep bench --params params/study.yaml

lock: $(STAMP)
	(head -n 2 requirements.lock; $(BIN)/pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/' | grep -v '^optsweep') > requirements.lock.new
	mv requirements.lock.new requirements.lock
