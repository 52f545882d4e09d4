# Two commands: `make demo` runs the main job, `make test` runs lint, type check and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# PyPI's Linux torch wheels carry CUDA (gigabytes). For torch's CPU-only wheels, add their index:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
# Every install that can pull torch goes through the pins of constraints.txt.
INSTALL := $(PIP) install -c constraints.txt$(if $(TORCH_INDEX), --extra-index-url $(TORCH_INDEX))
VENV_STAMP := $(VENV)/.created
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint typecheck unit fuzz soak bench docs clean

$(VENV_STAMP):
	@echo "== creating the virtual environment $(VENV) and upgrading its pip"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	touch $(VENV_STAMP)

$(DEMO_STAMP): pyproject.toml constraints.txt $(VENV_STAMP)
	@echo "== installing pantheon-kd with the demo extra (torch, scikit-learn, matplotlib): a few minutes the first time"
	$(INSTALL) -e '.[demo]'
	touch $(DEMO_STAMP)

$(TEST_STAMP): pyproject.toml constraints.txt $(VENV_STAMP)
	@echo "== installing pantheon-kd with the test, demo, minilm, docs and paddle extras: several minutes the first time"
	$(INSTALL) -e '.[test,demo,minilm,docs,paddle]'
	touch $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/pantheon demo

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

unit: $(TEST_STAMP)
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

test: lint typecheck unit

# The fuzz suites of tests/fuzz with FUZZ_SCALE times their examples (make test runs them x1).
FUZZ_SCALE ?= 50
fuzz: $(TEST_STAMP)
	PANTHEON_FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/python -m pytest tests/fuzz -q --timeout=0 $(PYTEST_ARGS)
	PANTHEON_FUZZ_SCALE=$(FUZZ_SCALE) PANTHEON_FAULT_KILLS=$(FAULT_KILLS) \
		$(BIN)/python -m pytest tests/faults -q --timeout=0 \
		--ignore=tests/faults/test_soak.py $(PYTEST_ARGS)

# The fault suite's kill tests kill this many times under make fuzz (make test: 3).
FAULT_KILLS ?= 12
# A soak of SOAK_SECONDS with the teacher killed every SOAK_KILL_EVERY s (make test: 20 s).
SOAK_SECONDS ?= 180
SOAK_KILL_EVERY ?= 20
soak: $(TEST_STAMP)
	$(BIN)/python tests/faults/soak.py --seconds $(SOAK_SECONDS) --kill-every $(SOAK_KILL_EVERY)

bench: $(TEST_STAMP)
	$(BIN)/pantheon bench

docs: $(TEST_STAMP)
	PDOC_ALLOW_EXEC=1 $(BIN)/python -m pdoc --docformat google -o build/api pantheon pantheon.torch pantheon.onnx pantheon.hf pantheon.paddle pantheon.ray

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
