# Everything runs from a local virtual environment in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install run test test-sqlite test-postgres lint bench clean postgres screenshots

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: install
	$(BIN)/gateway demo --host $(HOST) --port $(PORT)
	$(BIN)/gateway serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy

# The whole suite runs twice: on SQLite, then on PostgreSQL. GATEWAY_DATABASE_URL names the
# PostgreSQL database to use; without it a local server is installed (Debian's package) and started.
# The console's browser tests need headless Chromium: Debian's package, installed if missing.
# pytest exits 5 when it collected no tests: that is a failure here.
PYTEST = rc=0; $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test: lint test-sqlite test-postgres

test-sqlite: install
	chromium="$$(scripts/chromium.sh)" && \
	env -u GATEWAY_DATABASE_URL -u GATEWAY_KEYSTORE_URL TEST_CHROMIUM="$$chromium" sh -c '$(PYTEST)'

test-postgres: install
	chromium="$$(scripts/chromium.sh)" && \
	url="$${GATEWAY_DATABASE_URL:-$$(scripts/postgres.sh start)}" && \
	GATEWAY_DATABASE_URL="$$url" TEST_CHROMIUM="$$chromium" sh -c '$(PYTEST)'

# A local PostgreSQL for trying the gateway or the benchmarks on it; prints its URL.
postgres:
	@scripts/postgres.sh start

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache

# The console's pictures in docs/console/, taken in headless Chromium on the demo data.
screenshots: install
	chromium="$$(scripts/chromium.sh)" && env -u GATEWAY_DATABASE_URL -u GATEWAY_KEYSTORE_URL \
	TEST_CHROMIUM="$$chromium" CONSOLE_SCREENSHOTS=docs/console \
	$(BIN)/pytest tests/browser/test_pages.py

bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)
