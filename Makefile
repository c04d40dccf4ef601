# The commands the README shows. Each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 5000
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint worker clean

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

## test: the whole suite (integration tests skip, with the reason, when a service is missing)
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

## worker: a Celery worker for all queues (needs CELERY_BROKER_URL)
worker: $(STAMP)
	$(BIN)/celery -A worker worker --loglevel INFO

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
