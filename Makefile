# Two commands do all the set-up: `make train` and `make test` create .venv, install segedu,
# generate the synthetic data when it is missing, then train / test.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
LOCK   := requirements.lock
DATA   := data/synthetic
RUN    := runs/synthetic-segformer-b0

.PHONY: install lock data train test test-package test-notebooks lab clean assignments grade

install: $(STAMP)

# Every package at the exact version in requirements.lock, then segedu itself (no resolution).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Regenerate requirements.lock from pyproject.toml (all extras) under the bounds in constraints.txt.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv>=0.9"
	$(BIN)/uv pip compile pyproject.toml --all-extras -c constraints.txt --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header --annotation-style line -o $(LOCK)

data: $(STAMP)
	$(BIN)/segedu data --root $(DATA)

# --overwrite: a second `make train` replaces the run it made (checkpoint, log, curves), nothing else.
train: data
	$(BIN)/segedu train --config synthetic --data $(DATA) --out $(RUN) --overwrite

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
