# Two commands: `make repro` runs the demo pipeline, `make test` runs the test suite.
# Both share `setup`, which creates .venv with torch installed FIRST (the pinned CPU wheel on
# this kind of machine; the normal wheel elsewhere) so that no loose requirement pulls a
# multi-GB CUDA build, then installs the project with its test extra. When .venv is already
# complete (its stamp is newer than pyproject.toml) setup does nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN ?= torch==2.13.0

.PHONY: setup repro test lint bench bench-gpu study
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

repro: setup
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

# The full study (docs/study.md): one `dvc exp run` per variant of study.yaml, results into
# docs/study/ and the Results section of docs/study.md.
study: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pipelines.study

# One thread per process: tests start training subprocesses, and oversubscribed OpenMP
# threads slow small-tensor work down by orders of magnitude.
test: setup
	PATH="$(abspath $(BIN)):$$PATH" OMP_NUM_THREADS=1 TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 $(BIN)/python -m pytest -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# `make bench BENCH_ARGS="--only inference"` runs chosen sections (python -m benchmarks.run -h).
bench: setup
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# On a machine with a CUDA GPU: training/inference/loader/evaluation figures into
# benchmarks/results.json (key gpu) and the GPU section of benchmarks/RESULTS.md.
bench-gpu: setup
	$(BIN)/python -m benchmarks.gpu
