# `make test` and `make demo` set up .venv on first use, then run.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: it comes from the machine's local wheel store, never a multi-GB download
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/fabric-opt generate --model tiny --prompt "a red circle on a blue background" --n-images 4 --steps 10 --out outputs/demo

bench: $(STAMP)
	$(BIN)/python -m bench.generator

clean:
	rm -rf outputs runs mlflow.db
