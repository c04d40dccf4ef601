# The commands the README shows. Each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 5000
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint worker clean mutation

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## run: migrate, seed the demo program once, serve the portal on 127.0.0.1:$(PORT)
run: $(STAMP)
	$(BIN)/wellness-perks init-db
	$(BIN)/wellness-perks seed-demo
	PORT=$(PORT) $(BIN)/flask --app wellness_perks run --host 127.0.0.1 --port $(PORT) --no-reload

## test: the whole suite (integration tests skip, with the reason, when a service is missing),
## in TEST_PROCESSES processes (the integration tests one after another in one of them)
TEST_PROCESSES ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadgroup $(PYTEST_ARGS)

## lint: ruff, and the import rules of the layout (import-linter contracts in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check --no-cache .
	$(BIN)/lint-imports --no-cache

## worker: a Celery worker for all queues (needs CELERY_BROKER_URL)
worker: $(STAMP)
	$(BIN)/celery -A worker worker --loglevel INFO

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache mutants

# Mutation testing (docs/testing.md), by hand like the benchmark: mutmut, one module at a time,
# against the tests that cover it, on SQLite. `make mutation MODULES="verify allocation"`;
# MUTATION_CHILDREN mutants at once (1 by default: a shared machine).
MODULES ?= verify allocation queue auth sweeper claims codes imports
MUTATION_CHILDREN ?= 1
MUTATION_STAMP := $(VENV)/.mutation-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(MUTATION_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,mutation]'
	rm -f $(VENV)/.mutation-*
	touch $(MUTATION_STAMP)

## mutation: mutmut over MODULES, then the score per module
mutation: $(MUTATION_STAMP)
	$(BIN)/python tools/mutation.py --max-children $(MUTATION_CHILDREN) $(MODULES)

# Benchmarks (bench/README.md): PostgreSQL on 127.0.0.1:5432 and redis-server on PATH.
# Any of these may be given on the command line, e.g. `make bench N=20000 C=64`:
#   N, Q (default N), C (connections), LOAD_PROCS, WEB_WORKERS, WEB_WORKER_CLASS, WEB_THREADS,
#   CELERY_WORKERS, CELERY_CONCURRENCY, WAIT_QUIET (s), BENCH_ARGS (more options, see --help);
#   bench-scale: SCALE_MAX, SCALE_CLAIMS, SCALE_PROBE.
.PHONY: bench bench-scale
N ?= 2000
BENCH_STACK = $(if $(C),--concurrency $(C)) $(if $(LOAD_PROCS),--load-processes $(LOAD_PROCS)) \
	$(if $(WEB_WORKERS),--web-workers $(WEB_WORKERS)) \
	$(if $(WEB_WORKER_CLASS),--web-worker-class $(WEB_WORKER_CLASS)) \
	$(if $(WEB_THREADS),--web-threads $(WEB_THREADS)) \
	$(if $(CELERY_WORKERS),--celery-workers $(CELERY_WORKERS)) \
	$(if $(CELERY_CONCURRENCY),--celery-concurrency $(CELERY_CONCURRENCY)) \
	$(if $(WAIT_QUIET),--wait-quiet $(WAIT_QUIET))

## bench: launch day: N creators claim Q codes over HTTP (quick run N=2000; N=20000 is the day)
bench: $(STAMP)
	$(BIN)/python -m bench.launch --n $(N) $(if $(Q),--q $(Q)) $(BENCH_STACK) $(BENCH_ARGS)

## bench-scale: how claim latency, allocation, quota/stock time and the console pages grow
## with stock and claims
bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale $(if $(SCALE_MAX),--max $(SCALE_MAX)) \
	$(if $(SCALE_CLAIMS),--claims $(SCALE_CLAIMS)) $(if $(SCALE_PROBE),--probe $(SCALE_PROBE)) \
	$(BENCH_STACK) $(BENCH_ARGS)
