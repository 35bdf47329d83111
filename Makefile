# Quick start: `make test` (and later `make demo`) create .venv from requirements.txt when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEMO_DATA := demo_data/VOCdevkit
DEMO_LOGS := logs/demo

# The ISBI 2012 recipes (recipes/isbi2012/, docs/isbi.md). ISBI= the medical-layout folder,
# ISBI_SPLIT= a folder with train.txt and val.txt, ISBI_LOGS= where the weights and results go.
ISBI ?= ../shared/data/isbi2012_cells
ISBI_SPLIT ?= recipes/isbi2012
ISBI_LOGS ?= logs/isbi
# cpu.yaml trains for 325 s in bf16 + channels-last, which needs native bf16 (AVX512-BF16 or
# AMX), and get_miou.py then averages the 8 turns and mirrors in bf16; elsewhere both run in
# fp32, and the training fits fewer epochs in the same time (asked only when make isbi runs;
# docs/isbi.md has the measurements).
ISBI_BF16 = $(shell $(PY) -c "from utils.device import cpu_has_native_bf16 as b; print(b())")
ISBI_FP32 = --precision fp32 --no-channels-last
ISBI_RUNTIME ?= $(if $(filter True,$(ISBI_BF16)),,$(ISBI_FP32))
ISBI_EVAL ?= --tta d4 $(if $(filter True,$(ISBI_BF16)),--precision bf16,)
ISBI_DATA = --dataset-path $(ISBI) --train-split $(ISBI_SPLIT)/train.txt

.PHONY: venv test test-all check test-gpu gpu-check docs-check lint demo isbi isbi-gpu app clean

# make venv TORCH=cpu: PyTorch's CPU-only wheels, a much smaller .venv than the 6 GB CUDA
# build, for a machine without an NVIDIA GPU; the default is PyPI's CUDA build, which runs on a
# CPU too (and is what CI installs).
TORCH ?=
TORCH_CPU_INDEX = https://download.pytorch.org/whl/cpu
TORCH_PINS = $(shell grep -E '^torch(vision)?==' requirements.txt)

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(filter cpu,$(TORCH)),$(CPU_TORCH))
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

# PyTorch's CPU wheels, tried once with a short timeout: where that index cannot be reached,
# one sentence points to the default route instead of minutes of retries.
CPU_TORCH = $(PY) -m pip install --timeout 20 --retries 1 $(TORCH_PINS) \
	--index-url $(TORCH_CPU_INDEX) || { echo "make venv TORCH=cpu: PyTorch's CPU wheels \
	could not be installed from $(TORCH_CPU_INDEX) (see pip's message above); run make venv \
	without TORCH=cpu: PyPI's CUDA build runs on a CPU too." >&2; exit 2; }

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The fast set, what a newcomer waits for; test-all adds the slow tests; check (CI) is lint and
# test-all. Tests run in TEST_WORKERS processes (pytest-xdist), each with its share of the
# cores: their models are tiny, and two processes on 2 cores take 30% less time than one.
# pytest's own numbered temporary folder (/tmp/pytest-of-$USER/pytest-N) is deleted when every
# test passed; of a failed run only the failed tests' folders are kept, and only until the next
# run (pyproject.toml): each run once kept its 4 GB of checkpoints, and they filled the disk.
TEST_WORKERS ?= 2
PYTEST = $(PY) -m pytest
test: $(STAMP)
	$(PYTEST) -n $(TEST_WORKERS) -m "not slow"

test-all: $(STAMP)
	$(PYTEST) -n $(TEST_WORKERS)

check: lint test-all

# The short commands of the README and docs/, run as written in a workspace laid out as after
# make demo.
docs-check: $(STAMP)
	$(PYTEST) tests/test_readme.py

# On a GPU machine: only the tests marked cuda. Uses .venv when its python imports torch (a .venv
# brought from another machine links to a python that is not there), else $(PYTHON) as it is (a
# GPU machine's python3 already has torch; nothing is installed). Without torch or a GPU it stops
# with one sentence instead of skipping every test.
GPU_PY = $(shell $(PY) -c "import torch" >/dev/null 2>&1 && echo $(PY) || echo $(PYTHON))
NEEDS_GPU = $(GPU_PY) -c "import importlib.util as u, sys; u.find_spec('torch') or sys.exit( \
	'make $@: neither $(PY) nor $(GPU_PY) imports torch; run make venv, or give PYTHON= a \
	python with torch.'); import torch; torch.cuda.is_available() or sys.exit( \
	'make $@: torch sees no CUDA GPU here; run it on a GPU machine.')"
test-gpu:
	@$(NEEDS_GPU)
	$(GPU_PY) -m pytest -m cuda

# The whole GPU check (the cuda tests, both benchmarks, ISBI at 512x512, the counting ways),
# within 8 minutes: each step has a time limit; DATA= a copy of ../shared/data (without one the
# ISBI step is skipped, saying so). DEVICE=cpu rehearses every step on the CPU at toy sizes.
gpu-check:
	PYTHON=$(GPU_PY) bash benchmarks/gpu_check.sh

# Train from scratch on a generated 4-class data set (60 images) on the CPU: recipes/demo.yaml.
demo: $(STAMP)
	test -d $(DEMO_DATA) || $(PY) -m utils.data.demo_data --out $(DEMO_DATA) --num-images 60
	$(PY) train.py --config recipes/demo.yaml --dataset-path $(DEMO_DATA) --save-dir $(DEMO_LOGS)
	@echo "in-training mIoU every 3 epochs (predicting only background scores about 21):"
	@cat $$(ls -d $(DEMO_LOGS)/loss_* | tail -n 1)/epoch_miou.txt
	$(PY) get_miou.py --dataset-path $(DEMO_DATA) --device cpu \
		--model-path $(DEMO_LOGS)/last_epoch_weights.pth --miou-out-path $(DEMO_LOGS)/miou_out
	$(PY) predict.py --mode dir_predict --device cpu --model-path $(DEMO_LOGS)/last_epoch_weights.pth \
		--dir-origin-path $(DEMO_DATA)/VOC2007/JPEGImages --dir-save-path $(DEMO_LOGS)/img_out
	@echo "Overlays in $(DEMO_LOGS)/img_out/, mIoU charts and metrics.json in $(DEMO_LOGS)/miou_out/"

# The web page (app.py, docs/app.md) at http://127.0.0.1:7860, for the weights under logs/:
# first installs requirements-app.txt into .venv (--no-deps: see that file). Flags go in ARGS,
# e.g. make app ARGS="--model-path logs/demo/last_epoch_weights.pth --port 7861".
app: $(STAMP)
	$(PY) -m pip install -q --no-deps -r requirements-app.txt
	$(PY) app.py $(ARGS)

isbi: $(STAMP)
	$(PY) train.py --config recipes/isbi2012/cpu.yaml $(ISBI_DATA) --save-dir $(ISBI_LOGS) \
		$(ISBI_RUNTIME)
	$(PY) get_miou.py --dataset-path $(ISBI) --split $(ISBI_SPLIT)/val.txt \
		--model-path $(ISBI_LOGS)/last_epoch_weights.pth --miou-out-path $(ISBI_LOGS)/miou_out \
		$(ISBI_EVAL)
	@echo "Held-out mIoU above; charts and metrics.json in $(ISBI_LOGS)/miou_out/"

isbi-gpu:
	$(GPU_PY) train.py --config recipes/isbi2012/gpu.yaml $(ISBI_DATA) \
		--val-split $(ISBI_SPLIT)/val.txt --save-dir $(ISBI_LOGS)_gpu
	$(GPU_PY) get_miou.py --dataset-path $(ISBI) --split $(ISBI_SPLIT)/val.txt --device cuda \
		--model-path $(ISBI_LOGS)_gpu/best_epoch_weights.pth --miou-out-path $(ISBI_LOGS)_gpu/miou_out
	@echo "Held-out mIoU above (best epoch by that same mIoU); results in $(ISBI_LOGS)_gpu/miou_out/"

clean:
	rm -rf logs miou_out img_out demo_data .pytest_cache .ruff_cache
