# The README's two commands: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch lies on the project machines' disk; users with GPUs may override this.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/simed demo

# The live page's browser tests drive Debian's Chromium with Playwright (from the test extra; it
# never downloads a browser). Installed here when missing and we are root with apt-get; otherwise
# those tests are skipped and say so in pytest's summary.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || echo "WARNING: apt-get could not install chromium: the browser tests will be SKIPPED"; \
	  else \
	    echo "WARNING: chromium is missing and cannot be installed here (needs root and apt-get):" \
	         "the browser tests will be SKIPPED"; \
	  fi; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python tools/bench_simulate.py
	$(BIN)/python tools/bench_ingest.py
	$(BIN)/python tools/bench_phasing.py
	$(BIN)/python tools/bench_reprocess.py
	$(BIN)/python tools/bench_pipeline.py

clean:
	rm -rf $(VENV) simed-demo .pytest_cache
