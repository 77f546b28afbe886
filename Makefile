# make demo : install (idempotent) and run the whole pipeline on the embedded tiny default
# make test : install (idempotent) and run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= offline
export DS_ACCELERATOR ?= cpu
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/torch_extensions

.PHONY: install demo test lint clean

install: $(STAMP)

# Torch is pinned in the same pip command as everything else: unpinned, pip takes a multi-GB CUDA build.
# torchvision must stay out (its only wheel here is a CUDA build that breaks transformers' model imports).
$(STAMP): setup.py
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)" -e ".[dev]"
	$(BIN)/python -m common.env_check
	touch $(STAMP)

demo: install
	rm -rf outputs/demo
	$(BIN)/python recipes/demo.py --root outputs/demo

# Two workers, one CPU thread each (more threads oversubscribe 2 cores); the long multi-process tests start first
# (tests/conftest.py).
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal tests

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
