# `make test` is the one command that installs the test tools and runs every
# check: style, types, and pytest (unit, interop, end-to-end, Autobahn
# conformance) with branch coverage of rfc6455/. .ci/run calls it.
# Python packages go into the checkout's own virtual environment, .venv/ (made with
# `$(PYTHON) -m venv` when missing), never into the system's interpreter.
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export AUTOBAHN ?= $(CURDIR)/.autobahn
# Debian's packages the tests run: chromium (the web client's), redis-server (the Redis engine's),
# postgresql (the PostgreSQL archive's; tests/server/postgres_service.py runs its binaries), and
# nginx and openssl (tests/server/test_deploy_doc.py runs docs/deploy.md's nginx over TLS).
APT_PACKAGES := chromium redis-server postgresql nginx openssl

.PHONY: test deps system-deps python-deps style types pytest conformance bench clean

test: deps style types pytest

deps: system-deps python-deps
	$(PY) -m tests.conformance.autobahn install $(AUTOBAHN) >/dev/null

# Only the Debian packages missing are installed, after one apt-get update, which needs root;
# anyone else is told which are missing and the command that installs them.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	if [ -z "$$missing" ]; then \
		echo "system packages: $(APT_PACKAGES) present"; \
	elif [ "$$(id -u)" -eq 0 ]; then \
		echo "system packages: installing$$missing with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
		echo "system packages missing:$$missing; installing them needs root:" \
			"sudo apt-get update && sudo apt-get install -y$$missing" >&2; \
		exit 1; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

python-deps: $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,bench,auth,redis,postgres]'

style:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

types:
	$(PY) -m mypy

# The Autobahn|Testsuite (tests/conformance: about 10 minutes of its Python 2 fuzzing client,
# nearly all of them permessage-deflate's 216 cases) runs beside the rest of the suite, which
# takes as long: the two share the machine's cores instead of following each other.
pytest:
	@mkdir -p $(AUTOBAHN)
	$(PY) -m pytest tests/conformance -p no:cacheprovider >$(AUTOBAHN)/conformance.log 2>&1 & \
	conformance=$$!; \
	$(PY) -m pytest --cov --cov-branch --cov-report=term-missing:skip-covered \
		--ignore=tests/conformance; suite=$$?; \
	wait $$conformance; autobahn=$$?; \
	echo "--- tests/conformance (Autobahn):"; cat $(AUTOBAHN)/conformance.log; \
	test $$suite -eq 0 && test $$autobahn -eq 0

conformance:
	$(PY) -m pytest tests/conformance -v

bench:
	$(PY) benchmarks/bench_masking.py
	$(PY) benchmarks/bench_frames.py

clean:
	rm -rf .coverage .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
