# Quick start: `make test` (and later `make demo`) create .venv from requirements.txt when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEMO_DATA := demo_data/VOCdevkit
DEMO_LOGS := logs/demo

# The README's ISBI 2012 recipe: 10 minutes on 2 CPU cores; ISBI= the medical-layout folder.
ISBI ?= ../shared/data/isbi2012_cells
ISBI_SIZE ?= 160
ISBI_EPOCHS ?= 14
ISBI_LOGS ?= logs/isbi
ISBI_SPLIT := recipes/isbi2012

.PHONY: venv test test-gpu gpu-check docs-check lint demo isbi clean

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest

# The README's short commands, run as written in a workspace laid out as after make demo.
docs-check: $(STAMP)
	$(PY) -m pytest tests/test_readme.py

# On a GPU machine: only the tests marked cuda. Uses .venv when it exists, else $(PYTHON) as it
# is (a GPU machine's python3 already has torch; nothing is installed).
GPU_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
test-gpu:
	$(GPU_PY) -m pytest -m cuda

# The whole GPU check (tests, both benchmarks, ISBI at 512x512), about 5 minutes; DATA= a copy
# of ../shared/data.
gpu-check:
	PYTHON=$(GPU_PY) bash benchmarks/gpu_check.sh

# Train from scratch on a generated 4-class data set (60 images), on the CPU, in a few minutes.
demo: $(STAMP)
	test -d $(DEMO_DATA) || $(PY) -m utils.demo_data --out $(DEMO_DATA) --num-images 60
	$(PY) train.py --dataset-path $(DEMO_DATA) --num-classes 4 --model-path '' \
		--input-shape 64 64 --no-freeze-train --unfreeze-epoch 12 --unfreeze-batch-size 4 \
		--dice-loss --eval-period 3 --num-workers 1 --save-dir $(DEMO_LOGS) \
		--name-classes background square circle triangle
	@echo "in-training mIoU every 3 epochs (predicting only background scores about 21):"
	@cat $$(ls -d $(DEMO_LOGS)/loss_* | tail -n 1)/epoch_miou.txt
	$(PY) get_miou.py --dataset-path $(DEMO_DATA) --device cpu \
		--model-path $(DEMO_LOGS)/last_epoch_weights.pth --miou-out-path $(DEMO_LOGS)/miou_out
	$(PY) predict.py --mode dir_predict --device cpu --model-path $(DEMO_LOGS)/last_epoch_weights.pth \
		--dir-origin-path $(DEMO_DATA)/VOC2007/JPEGImages --dir-save-path $(DEMO_LOGS)/img_out
	@echo "Overlays in $(DEMO_LOGS)/img_out/, mIoU charts and metrics.json in $(DEMO_LOGS)/miou_out/"

isbi: $(STAMP)
	$(PY) train.py --dataset-path $(ISBI) --dataset-format medical --num-classes 2 --model-path '' \
		--train-split $(ISBI_SPLIT)/train.txt --val-split $(ISBI_SPLIT)/val.txt \
		--input-shape $(ISBI_SIZE) $(ISBI_SIZE) --no-freeze-train --unfreeze-epoch $(ISBI_EPOCHS) \
		--unfreeze-batch-size 1 --init-lr 1e-3 --no-lr-fit --augment flip --dice-loss \
		--eval-period 7 --num-workers 1 --save-dir $(ISBI_LOGS)
	$(PY) get_miou.py --dataset-path $(ISBI) --dataset-format medical --num-classes 2 \
		--split $(ISBI_SPLIT)/val.txt --input-shape $(ISBI_SIZE) $(ISBI_SIZE) --name-classes cell membrane \
		--model-path $(ISBI_LOGS)/last_epoch_weights.pth --miou-out-path $(ISBI_LOGS)/miou_out
	@echo "Held-out mIoU above; charts and metrics.json in $(ISBI_LOGS)/miou_out/"

clean:
	rm -rf logs miou_out img_out demo_data .pytest_cache .ruff_cache
