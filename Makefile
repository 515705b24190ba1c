# `make test` is the one command that installs the test tools and runs every
# check: style, types, and pytest (unit, interop, end-to-end, Autobahn
# conformance) with branch coverage of rfc6455/. .ci/run calls it.
PYTHON ?= python3
export AUTOBAHN ?= $(CURDIR)/.autobahn

.PHONY: test deps style types pytest conformance bench clean

test: deps style types pytest

# Debian's packages the tests run: chromium (the web client's), redis-server (the Redis engine's),
# postgresql (the PostgreSQL archive's; tests/server/postgres_service.py runs its binaries), and
# nginx and openssl (tests/server/test_deploy_doc.py runs docs/deploy.md's nginx over TLS).
# Only those missing are installed, after one apt-get update.
deps:
	missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[test,bench,auth,redis,postgres]'
	$(PYTHON) -m tests.conformance.autobahn install $(AUTOBAHN) >/dev/null

style:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

types:
	$(PYTHON) -m mypy

# The Autobahn|Testsuite (tests/conformance: about 10 minutes of its Python 2 fuzzing client,
# nearly all of them permessage-deflate's 216 cases) runs beside the rest of the suite, which
# takes as long: the two share the machine's cores instead of following each other.
pytest:
	@mkdir -p $(AUTOBAHN)
	$(PYTHON) -m pytest tests/conformance -p no:cacheprovider >$(AUTOBAHN)/conformance.log 2>&1 & \
	conformance=$$!; \
	$(PYTHON) -m pytest --cov --cov-branch --cov-report=term-missing:skip-covered \
		--ignore=tests/conformance; suite=$$?; \
	wait $$conformance; autobahn=$$?; \
	echo "--- tests/conformance (Autobahn):"; cat $(AUTOBAHN)/conformance.log; \
	test $$suite -eq 0 && test $$autobahn -eq 0

conformance:
	$(PYTHON) -m pytest tests/conformance -v

bench:
	$(PYTHON) benchmarks/bench_masking.py
	$(PYTHON) benchmarks/bench_frames.py

clean:
	rm -rf .coverage .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
