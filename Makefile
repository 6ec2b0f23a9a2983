# Two entry points for a newcomer: `make demo` and `make test`. Both install into .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU build lies on this machine's disk; any other pulls CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,intel,spark]'
	# Java for the Spark engine from Debian's packages (pyspark starts a JVM).
	command -v java >/dev/null || (apt-get update -qq && apt-get install -y -qq default-jre-headless)
	touch $(STAMP)

install: $(STAMP)

# The real data sets beside the checkout unless DISTILLGUARD_DATA_DIR says otherwise.
DATA_DIR ?= $(abspath ../shared/data)

demo: $(STAMP)
	DISTILLGUARD_DATA_DIR=$${DISTILLGUARD_DATA_DIR:-$(DATA_DIR)} $(BIN)/python -m distillguard.demo

# Two processes, each test file kept on one (its module-scoped servers and Spark session stay
# whole); TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile

# The layering contract and the type checker are configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
