# Every target creates .venv and installs what it needs: on a fresh machine
# `make demo` and `make test` are the only commands required.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: all venv demo examples test lint typecheck pytest compiled clean-compiled test-compiled bench docs docs-serve screenshots clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.demo
	@echo
	$(BIN)/streamkit run examples/orders.py:pipeline --input examples/data/orders.csv \
		--every 10 --checkpoint $(VENV)/demo.db --state-history $(VENV)/demo-history --output - \
		--dashboard
	$(BIN)/streamkit history $(VENV)/demo-history
	$(BIN)/streamkit history $(VENV)/demo-history latest --html $(VENV)/demo-report.html

examples: $(STAMP)
	$(BIN)/python -m examples.log_analytics
	$(BIN)/python -m examples.crawler
	rm -f $(VENV)/ingest.db*
	$(BIN)/python -m examples.ingest --db $(VENV)/ingest.db

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/pyright

# The pure-Python package, even when the compiled envelope is built (STREAMKIT_NO_COMPILED),
# on every core (pytest-xdist; a test file runs in one worker, so that module fixtures
# such as the benchmarks' quick run are made once).
PARALLEL := -n auto --maxprocesses=4 --dist loadfile
pytest: $(STAMP)
	STREAMKIT_NO_COMPILED=1 STREAMKIT_TEST_BUILD=pure $(BIN)/pytest -q $(PARALLEL)

test: lint typecheck pytest

# The optional compiled envelope (docs/performance.md): streamkit/_native.py built with
# mypyc, in place; needs a C compiler and the Python headers.
compiled: $(STAMP)
	$(BIN)/python -c "import setuptools" 2>/dev/null || $(BIN)/python -m pip install --quiet setuptools
	$(BIN)/python hatch_build.py

clean-compiled:
	rm -f streamkit/_native*.so

# The suite against the compiled envelope, which must load (STREAMKIT_TEST_BUILD), in
# about a minute: all but the tests that do not depend on the envelope's build (servers,
# browsers, crashes, benchmarks, examples, the command line, the dashboard, reports,
# stores, the documentation build).
COMPILED_SKIP := test_checkpoint_crashes test_dashboard_browser test_browsers test_docs_servers \
	test_servers test_redis_workers test_benchmarks test_examples test_ingest_example \
	test_cli test_dashboard test_report test_store_contract test_api_tables test_docs
test-compiled: compiled
	STREAMKIT_TEST_BUILD=compiled $(BIN)/pytest -q $(PARALLEL) -p no:cacheprovider -m "not server" \
		$(foreach t,$(COMPILED_SKIP),--ignore=tests/$(t).py)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve

# Retake the dashboard and report screenshots shown in docs/observability.md
# (the browser tests take them; headless Chromium: Debian's chromium-headless-shell).
screenshots: $(STAMP)
	STREAMKIT_SCREENSHOTS=docs/img $(BIN)/pytest -q tests/test_dashboard_browser.py -k "every_item or opens_offline_with"

clean:
	rm -rf $(VENV) site .mypy_cache .pytest_cache .ruff_cache .hypothesis
	rm -f streamkit/_native*.so
