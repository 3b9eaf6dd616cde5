# pylitefs: the two set-up commands are `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST ?= $(PY) -m pytest
ARGS   ?=
REPL_ARGS ?=
FAILOVER_ARGS ?=
SYNC_ARGS ?=

.PHONY: install test unit demo bench clean

install:
	@bash scripts/install.sh

$(VENV)/.installed: pyproject.toml
	@bash scripts/install.sh

## The whole suite: unit tests, then real-mount tests (FUSE must work: no skipping).
test: $(VENV)/.installed
	PYLITEFS_REQUIRE_FUSE=1 $(PYTEST) -q -ra $(ARGS)

## Pure-logic tests only (no FUSE, no etcd).
unit: $(VENV)/.installed
	$(PYTEST) -q tests/unit $(ARGS)

## The main job: a mount under ./demo, a SQLite workload through it, unmount.
demo: $(VENV)/.installed
	$(PY) -m pylitefs.demo

## Benchmarks: native SQLite vs the pylitefs mount vs bindfs, in one run; then replication; then election; then sync.
bench: $(VENV)/.installed
	$(PY) -m bench.run $(ARGS)
	$(PY) -m bench.replication $(REPL_ARGS)
	$(PY) -m bench.failover $(FAILOVER_ARGS)
	$(PY) -m bench.sync $(SYNC_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo
