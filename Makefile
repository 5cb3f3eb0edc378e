# Two commands do everything on a fresh clone (Python 3.11):
#   make run   install into .venv, build the demo database on first run, open the dashboard
#   make test  install into .venv (with test tools) and run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test test-fast install install-dev lint bench clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PIP) install -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(VENV)/bin/ranker demo init --if-empty
	$(VENV)/bin/streamlit run dashboard/app.py

test: install-dev
	$(VENV)/bin/pytest -q

# The inner loop: unit tests only (no servers, dashboard, browser, PostgreSQL or big worlds).
test-fast: install-dev
	$(VENV)/bin/pytest -q -m "not slow and not browser and not postgres"

lint: install-dev
	$(VENV)/bin/ruff check .

bench: install-dev
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
