# Everything runs in a project-local virtualenv (.venv) built from the locked versions.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench lock clean

## Set up and run the whole pipeline on the embedded default (local Ray, the project's own sample dump,
## a tiny model): prepare -> MNTP -> SimCSE -> pairs -> contrastive -> evaluate -> embed, ending with the
## report table.
demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/python jobs/pipeline.py --preset tiny output=runs/demo

## Set up and run the tests (slow ones included: real Ray, real DeepSpeed), after the linter.
test: $(STAMP)
	$(BIN)/ruff check bg2vec jobs bench tests
	$(BIN)/python -m pytest

## Benchmarks (printed tables; not tests).
bench: $(STAMP)
	$(BIN)/python bench/data_pipeline.py
	$(BIN)/python bench/encode.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/replicate.py

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned resolve pulls gigabytes of CUDA packages on CPU-only machines
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

## Re-lock the tested versions from the current virtualenv.
lock: $(STAMP)
	{ sed -n '1,2p' $(CONSTRAINTS); $(BIN)/python -m pip freeze --exclude-editable | \
	  sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) runs
