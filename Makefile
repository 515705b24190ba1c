# `make test` is the one command that installs the test tools and runs every
# check: style, types, and pytest (unit, interop, end-to-end, Autobahn
# conformance) with branch coverage of rfc6455/. .ci/run calls it.
PYTHON ?= python3
AUTOBAHN ?= $(CURDIR)/.autobahn
SHARED ?= $(CURDIR)/../shared

.PHONY: test deps style types pytest conformance bench clean

test: deps style types pytest

deps:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[test,bench,auth]'
	bash $(SHARED)/autobahn/install.sh $(AUTOBAHN) >/dev/null

style:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

types:
	$(PYTHON) -m mypy

pytest:
	$(PYTHON) -m pytest --cov --cov-branch --cov-report=term-missing:skip-covered

conformance:
	$(PYTHON) -m pytest tests/conformance -v

bench:
	$(PYTHON) benchmarks/bench_masking.py
	$(PYTHON) benchmarks/bench_frames.py

clean:
	rm -rf .coverage .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
