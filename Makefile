# One command sets up and runs the tests; one sets up and runs the main job.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-unit demo bench bench-gpu clean

setup: $(STAMP)

# torch==2.13.0 goes in first: it is the CPU build on this machine's disk, and the
# project's range (torch>=2.4) is then already satisfied, so no multi-GB CUDA build is pulled.
# The browser test (MLflow UI in headless Chromium) needs Debian's chromium and chromium-driver.
$(STAMP): pyproject.toml
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; } || \
	  echo "note: install chromium and chromium-driver (apt) for the browser test"; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

demo: $(STAMP)
	$(VENV)/bin/bfn quickstart

bench: $(STAMP)
	$(PY) bench/core.py
	$(PY) bench/data.py
	$(PY) bench/train.py
	$(PY) bench/sampler_math.py
	$(PY) bench/samplers.py
	$(PY) bench/conditional.py

bench-gpu: $(STAMP)  # one GPU, under 8 minutes: one table and gpu_bench.json
	$(PY) bench/gpu.py

clean:
	rm -rf $(VENV) .bfn build *.egg-info
