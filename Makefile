# Two commands do all the set-up: `make train` and `make test` create .venv, install segedu,
# generate the synthetic data when it is missing, then train / test.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DATA   := data/synthetic
RUN    := runs/synthetic-segformer-b0

.PHONY: install data train test test-package test-notebooks lab clean assignments grade

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,course,mmseg]"
	touch $(STAMP)

data: $(STAMP)
	$(BIN)/segedu data --root $(DATA)

train: data
	$(BIN)/segedu train --config synthetic --data $(DATA) --out $(RUN)

test: data
	$(BIN)/python -m pytest tests -q --durations=10
	$(BIN)/python -m pytest notebooks --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg \
		--nbval-cell-timeout=300 -p no:cacheprovider -q

# Classroom assignments (docs/instructors.md): student versions into assignments/release (ignored by git),
# then autograding of SUBMISSIONS/<student>/<notebook>.ipynb into assignments/gradebook.{csv,md}.
TIMEOUT ?= 300
assignments: $(STAMP)
	$(BIN)/python -m segedu.assignments --notebooks notebooks --course assignments generate

grade: assignments data
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=DIR  (DIR/<student>/<notebook>.ipynb)"; exit 2; }
	$(BIN)/python -m segedu.assignments --notebooks notebooks --course assignments grade "$(SUBMISSIONS)" --timeout $(TIMEOUT)

lab: data
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf $(RUN) .pytest_cache
