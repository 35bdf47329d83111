# Quick start: `make test` (and later `make demo`) create .venv from requirements.txt when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEMO_DATA := demo_data/VOCdevkit
DEMO_LOGS := logs/demo

.PHONY: venv test lint demo clean

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

# Train from scratch on a generated 4-class data set (60 images), on the CPU, in a few minutes.
demo: $(STAMP)
	test -d $(DEMO_DATA) || $(PY) -m utils.demo_data --out $(DEMO_DATA) --num-images 60
	$(PY) train.py --dataset-path $(DEMO_DATA) --num-classes 4 --model-path '' \
		--input-shape 64 64 --no-freeze-train --unfreeze-epoch 12 --unfreeze-batch-size 4 \
		--dice-loss --eval-period 3 --num-workers 1 --save-dir $(DEMO_LOGS)
	@echo "in-training mIoU every 3 epochs (predicting only background scores about 21):"
	@cat $$(ls -d $(DEMO_LOGS)/loss_* | tail -n 1)/epoch_miou.txt
	$(PY) get_miou.py --dataset-path $(DEMO_DATA) --num-classes 4 --input-shape 64 64 \
		--name-classes background square circle triangle --device cpu \
		--model-path $(DEMO_LOGS)/last_epoch_weights.pth --miou-out-path $(DEMO_LOGS)/miou_out
	$(PY) predict.py --mode dir_predict --num-classes 4 --input-shape 64 64 --device cpu \
		--model-path $(DEMO_LOGS)/last_epoch_weights.pth \
		--dir-origin-path $(DEMO_DATA)/VOC2007/JPEGImages --dir-save-path $(DEMO_LOGS)/img_out
	@echo "Overlays in $(DEMO_LOGS)/img_out/, mIoU charts and metrics.json in $(DEMO_LOGS)/miou_out/"

clean:
	rm -rf logs miou_out img_out demo_data .pytest_cache .ruff_cache
