# flopwatch: `make demo` runs the whole product locally, `make test` runs every test.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.PHONY: demo test bench lint format migrate clean help

help:
	@echo "make demo   - install, migrate, seed the demo organisation and start everything"
	@echo "make test   - install and run the whole test suite"
	@echo "make bench  - run the benchmarks in tests/bench (prints figures)"
	@echo "make lint   - ruff check and ruff format --check"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; flopwatch needs Python 3.11" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

migrate: $(STAMP)
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) manage.py seed_demo
	@echo
	@echo "  flopwatch is starting at http://127.0.0.1:8000/  (log in with a user above; Ctrl-C stops everything)"
	@echo "  e-mail alerts are written to var/mail/ instead of being sent"
	@echo
	@EMAIL_URL="filemail:///$(CURDIR)/var/mail" $(VENV)/bin/honcho start -f .demo.Procfile

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) tests/bench/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf var/celery var/test.sqlite3 .pytest_cache
