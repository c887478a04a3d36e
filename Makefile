# Two commands on a fresh machine (Python 3.11 and Java 17 present):
#   make demo   set up .venv, generate demo data, run the uplift_nightly DAG once through Airflow
#   make test   set up .venv (and Debian's Chromium for the browser tests) and run the whole test suite
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3.11
UV_VERSION := 0.13.9
TOOLS := $(CURDIR)/.tools
UV := $(TOOLS)/bin/uv
VENV := $(CURDIR)/.venv
RUN_DATE ?= 2026-10-30

export UPLIFT_HOME ?= $(CURDIR)
# The demo's experiment (conf/base declares none): set UPLIFT_CONF to your overlay for your own.
export UPLIFT_CONF ?= $(CURDIR)/conf/examples/demo.yml
export AIRFLOW_HOME ?= $(CURDIR)/var/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW_CONN_SPARK_DEFAULT ?= {"conn_type": "spark", "host": "local[2]"}
export PATH := $(VENV)/bin:$(PATH)
export PYSPARK_PYTHON := $(VENV)/bin/python
export PYSPARK_DRIVER_PYTHON := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup demo ui test test-fast lint bench bench-loop dist clean
setup: $(VENV)/.synced $(VENV)/spark-classes.jsa

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON) --reinstall-package pyspark
	touch $@

# The Spark drivers' class-data archive (jobs/runtime/class_archive.py): valid for these jars only,
# so it is rebuilt whenever the environment is synced.
$(VENV)/spark-classes.jsa: $(VENV)/.synced
	python -m jobs.runtime.class_archive

demo: setup
	uplift generate --last-day $(RUN_DATE)
	mkdir -p $(AIRFLOW_HOME)
	airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || { cat $(AIRFLOW_HOME)/db-migrate.log; exit 1; }
	airflow dags test uplift_nightly $(RUN_DATE) > $(AIRFLOW_HOME)/demo-run.log 2>&1 \
		|| { tail -50 $(AIRFLOW_HOME)/demo-run.log; uplift spark-server stop > /dev/null; exit 1; }
	@uplift spark-server stop > /dev/null  # the Spark Connect server the run's first Spark step started
	@echo "Airflow run log: $(AIRFLOW_HOME)/demo-run.log"
	@uplift summary --run-date $(RUN_DATE) 2>/dev/null

# The Airflow UI with the Campaigns page (jobs.ui.pages), on the demo's SQLite stores: Ctrl-C stops it.
UI_PORT ?= 8080
ui: setup
	mkdir -p $(AIRFLOW_HOME)
	airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || { cat $(AIRFLOW_HOME)/db-migrate.log; exit 1; }
	@echo "Airflow UI: http://localhost:$(UI_PORT)/  Campaigns: http://localhost:$(UI_PORT)/plugin/campaigns"
	@echo "Log in as admin; the password is printed below at start and kept in"
	@echo "  $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated (Airflow's simple auth manager)"
	@# The Spark Connect server the UI's runs start (jobs/runtime/connect.py) stops with the UI.
	trap 'uplift spark-server stop > /dev/null' EXIT; AIRFLOW__API__PORT=$(UI_PORT) airflow standalone

# The browser tests drive Debian's Chromium (tests/browser.py); as root, `make test` installs it.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@command -v apt-get > /dev/null || { echo "the browser tests need Debian's chromium package at $@"; exit 1; }
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core > /dev/null

test: setup $(CHROMIUM)
	python -m pytest --durations=30

# After every change: units and small-frame tests, no nightly run, Airflow or live stack.
test-fast: setup
	python -m pytest -m "not slow" --durations=15

# The job code for a Spark cluster's executors: set spark.py_files to it (docs/operations.md, Spark cluster).
dist: setup
	python -m jobs.runtime.dist dist/uplift_jobs.zip

lint: setup
	ruff check jobs dags tests benchmarks
	lint-imports
	ruff format --check jobs dags tests benchmarks

# The nightly run per size (S 250k, M 2.5M, L 10M sends), with references: benchmarks/results/<date>.{json,md};
# then the Campaigns pages over a 500k-customer audience: benchmarks/results/ui-pages-<date>.json;
# then the demo-size night through Airflow (task time): benchmarks/results/demo-night-<date>.json;
# then our learners and scikit-uplift's and causalml's against the truth of three simulated experiments
# (about 7 minutes): benchmarks/results/learners-<date>-<commit>.{json,md}; then the decision value
# against the training rows per arm (about 11 minutes): benchmarks/results/training-budget-<date>-<commit>.{json,md};
# then a night's steps at 30, 60 and 90 days of history: benchmarks/results/history-growth-<date>-<commit>.{json,md}.
SIZE ?= S M L
bench: setup $(CHROMIUM)
	python -m benchmarks.nightly --size $(SIZE)
	python -m benchmarks.ui_pages --customers 500000
	python -m benchmarks.demo_night
	python -m benchmarks.learners --seeds 5
	python -m benchmarks.learners_time --rows 400000
	python -m benchmarks.training_budget --seeds 3
	python -m benchmarks.history_growth --days 30 60 90

# The loop's statistics (docs/closing-the-loop.md): the gate's coverage over seeds of simulated nights
# (about 30 minutes), what the exploration share costs and buys (about a minute and a half), and the
# results step's coverage with monitoring's detection (docs/did-it-work.md, about 20 minutes).
bench-loop: setup
	python -m benchmarks.loop --seeds 10 --nights 8
	python -m benchmarks.exploration --seeds 5
	python -m benchmarks.results_coverage --seeds 3 --nights 10

clean:
	rm -rf var
