# Two commands: `make demo` runs the main job, `make test` runs lint, type check and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit fuzz bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo,minilm,docs,paddle]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pantheon demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

test: lint typecheck unit

# The fuzz suites of tests/fuzz with FUZZ_SCALE times their examples (make test runs them x1).
FUZZ_SCALE ?= 50
fuzz: $(STAMP)
	PANTHEON_FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/python -m pytest tests/fuzz -q --timeout=0 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/pantheon bench

docs: $(STAMP)
	PDOC_ALLOW_EXEC=1 $(BIN)/python -m pdoc --docformat google -o build/api pantheon pantheon.torch pantheon.onnx pantheon.hf pantheon.paddle pantheon.ray

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
