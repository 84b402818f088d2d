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

# The offline demo study (studies/tiny.yaml): tiny model, tiny reward models, 8 trials, about a
# minute on 2 CPU cores. Everything goes under runs/ (Optuna journal, MLflow database, presets,
# plots); running it again resumes the finished study and prints the summary.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/fabric-opt study --study tiny \
		--runs-dir runs --storage runs/optuna.journal --tracking-uri sqlite:///runs/mlflow.db
	@echo "recommended preset (fabric-opt generate --preset runs/tiny/presets/tiny.json):"
	@cat runs/tiny/presets/tiny.json

bench: $(STAMP)
	$(BIN)/python -m bench.generator

clean:
	rm -rf outputs runs mlflow.db
