# One command to serve, one to test. VENV may point outside the clone (CI caches it there).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
BIN := $(VENV)/bin

.PHONY: install serve test bench train evaluate clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	touch $@

serve: install
	$(BIN)/python -m uvicorn app.main:app --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench.serving

train: install
	$(BIN)/python -m training.digits
	$(BIN)/python -m training.objects
	$(BIN)/python -m training.sentiment

evaluate: install
	$(BIN)/python -m training.evaluate

clean:
	rm -rf $(VENV) var .pytest_cache test-artifacts
