# The two entry points (README): `make run` (install, prepare the demo on first start, open the app)
# and `make test` (install, run every test). Both are idempotent; a stamp file skips a done install.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# where `make run` serves: HOST (0.0.0.0 = every interface; 127.0.0.1 behind a reverse proxy), PORT, and
# BASE_URL, the sub-path the app lives under (e.g. BASE_URL=nve for http://host/nve/, as deploy/ sets up;
# empty = the root). README, "Hosting for your lab".
PORT ?= 8501
HOST ?= 0.0.0.0
BASE_URL ?=
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
APT_TEST := dataset-fashion-mnist chromium chromium-driver nginx

.PHONY: run test install system-test-deps prepare-demo lint screenshots

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# this pair installs from the local disk (a CPU-capable CUDA build); do not use torch 2.13.0
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	@rm -f $(VENV)/.installed-*
	@touch $@

# apt packages the tests need (root on a Debian machine); skipped when already there.
system-test-deps:
	@missing=""; for p in $(APT_TEST); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then (apt-get install -y $$missing || (apt-get update && apt-get install -y $$missing)); \
	  else echo "please install:$$missing (apt-get, as root)"; exit 1; fi; fi

prepare-demo: install
	$(PY) -m core prepare --preset demo --if-missing

run: prepare-demo
	$(PY) -m streamlit run app.py --server.port $(PORT) --server.address $(HOST) --server.baseUrlPath "$(BASE_URL)"

test: install system-test-deps
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check core tests pages app.py bench

# README's screenshots: the browser walk's own (tests/browser/test_walk.py), copied into docs/
screenshots: install system-test-deps
	$(PY) -m pytest -q tests/browser/test_walk.py
	cp test-output/browser/[0-7]-*.png docs/screenshots/
