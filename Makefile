# The README's two commands: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch lies on the project machines' disk; users with GPUs may override this.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/simed demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python tools/bench_simulate.py
	$(BIN)/python tools/bench_ingest.py
	$(BIN)/python tools/bench_phasing.py
	$(BIN)/python tools/bench_reprocess.py
	$(BIN)/python tools/bench_pipeline.py

clean:
	rm -rf $(VENV) simed-demo .pytest_cache
