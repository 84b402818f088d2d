# `make test` and `make demo` set up .venv on first use, then run.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint demo bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: it comes from the machine's local wheel store, never a multi-GB download
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# lint (ruff: lint and format check; mypy) then the whole suite
test: lint
	$(BIN)/python -m pytest -q

# the suite without the end-to-end tests marked slow (kill -9, several workers, real servers)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The offline demo (studies/toy-demo.yaml): the toy model trained in-project, steered by a
# simulated user who likes warm colours; 10 trials, then the report: the held-out comparison with
# the paper's and the A1111 defaults and showcase.png (first vs final rounds, no feedback vs the
# defaults vs tuned). Everything goes under runs/, the commands' default folder: the Optuna journal
# runs/optuna.journal, the MLflow database runs/mlflow.db with its artifacts in runs/mlflow-artifacts/
# (grids, plots, presets, the report), and runs/toy-demo/ (presets, plots, report). Running it again
# resumes the finished study; `fabric-opt study --study toy-demo` by hand is the same study.
DEMO_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=2
demo: $(STAMP)
	$(DEMO_ENV) $(BIN)/fabric-opt study --study toy-demo
	$(DEMO_ENV) $(BIN)/fabric-opt report toy-demo
	@echo "showcase: runs/toy-demo/report/showcase.png; preset: runs/toy-demo/presets/toy-demo.json"
	@echo "MLflow: $(BIN)/mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --default-artifact-root runs/mlflow-artifacts --host 127.0.0.1 --port 5000"

bench: $(STAMP)
	$(BIN)/python -m bench.generator

# everything the demo, the README's commands and a plain `mlflow ui` write
clean:
	rm -rf outputs runs mlflow.db mlruns mlartifacts
