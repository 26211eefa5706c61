# cytobench developer commands. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: a torch/torchvision pair that installs from the registries and runs on CPU.
# On a machine with torch preinstalled (e.g. a GPU box), run `make venv TORCH_SPEC=` with a
# venv made by `python -m venv --system-site-packages .venv`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
WANDB_MODE ?= offline
export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg WANDB_MODE

.PHONY: venv demo demo-toy test test-fast test-cellpose lint format notebooks bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_SPEC) -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

## The main job: train the quantum-dot localiser on simulated two-photon frames (CPU, a few minutes),
## then print its AUC table beside TrackPy's and the paper's (QD paper, Table 1).
DEMO_DIR ?= runs/qd_demo
demo: venv
	$(BIN)/python train.py experiment=qd_demo hydra.run.dir=$(DEMO_DIR)
	$(BIN)/cytobench reproduce qd/table1 --checkpoint $(DEMO_DIR)/checkpoints/best.pt --scale demo --out $(DEMO_DIR)/table1

## The foundation's toy detection demo (Faster R-CNN on simulated cells).
demo-toy: venv
	$(BIN)/python train.py experiment=faster_rcnn_demo

## Everything CI runs: unit, model, training, DDP and notebook tests.
test: venv
	$(BIN)/python -m pytest -n 2 --dist loadfile tests notebooks --nbmake -q

test-fast: venv
	$(BIN)/python -m pytest tests -m "not slow" -q

## The optional Cellpose baseline's tests, in a venv of its own (cellpose 3.1 pins numpy<2.1); CI runs it too.
CP_VENV ?= .venv-cellpose
$(CP_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(CP_VENV)
	$(CP_VENV)/bin/pip install -q --upgrade pip
	$(CP_VENV)/bin/pip install -q $(TORCH_SPEC) -e ".[dev,cellpose]"
	touch $@

test-cellpose: $(CP_VENV)/.installed
	$(CP_VENV)/bin/python -c "import cellpose.models, cellpose.train"  # fail here, not by skipping
	$(CP_VENV)/bin/python -m pytest -q tests/test_cellpose_runs.py tests/unit/test_cellpose_baseline.py \
		"tests/test_configs.py::test_smoke_experiment_runs[cellpose_brightfield_smoke]"

lint: venv
	$(BIN)/ruff check src tests bench experiments train.py
	$(BIN)/ruff format --check src tests bench experiments train.py

format: venv
	$(BIN)/ruff check --fix src tests bench experiments train.py
	$(BIN)/ruff format src tests bench experiments train.py

## Every bench/bench_*.py in turn (about 13 min on 2 cores), then one summary table of their claims;
## exits 1 if a bench failed. `make bench BENCH_ARGS="--only coco_eval eg_nms --out bench.md"`.
bench: venv
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf runs outputs multirun .pytest_cache
