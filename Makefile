# Quick start: `make test` (and later `make demo`) create .venv from requirements.txt when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEMO_DATA := demo_data/VOCdevkit
DEMO_LOGS := logs/demo

# The ISBI 2012 recipes (README, docs/isbi.md). ISBI= the medical-layout folder, ISBI_SPLIT= a
# folder with train.txt and val.txt, ISBI_LOGS= where the weights and results go.
ISBI ?= ../shared/data/isbi2012_cells
ISBI_SPLIT ?= recipes/isbi2012
ISBI_LOGS ?= logs/isbi
# make isbi, on the CPU: 160x160. With native bf16 (AVX512-BF16/AMX) bf16 + channels-last buys
# 24 epochs in the time fp32 needs for 14, so the epochs follow the CPU (asked only when used).
ISBI_BF16 = $(shell $(PY) -c "from utils.device import cpu_has_native_bf16 as b; print(b())")
ISBI_SIZE ?= 160
ISBI_EPOCHS ?= $(if $(filter True,$(ISBI_BF16)),24,14)
ISBI_RUNTIME ?= $(if $(filter True,$(ISBI_BF16)),--precision bf16 --channels-last,--precision fp32)
# make isbi-gpu, on one GPU: 512x512, bf16 + channels-last, elastic, best weights by mIoU.
ISBI_GPU_EPOCHS ?= 150

.PHONY: venv test test-gpu gpu-check docs-check lint demo isbi isbi-gpu clean

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
		--eval-period $$(( $(ISBI_EPOCHS) / 2 )) $(ISBI_RUNTIME) --num-workers 1 \
		--name-classes cell membrane --save-dir $(ISBI_LOGS)
	$(PY) get_miou.py --dataset-path $(ISBI) --split $(ISBI_SPLIT)/val.txt \
		--model-path $(ISBI_LOGS)/last_epoch_weights.pth --miou-out-path $(ISBI_LOGS)/miou_out
	@echo "Held-out mIoU above; charts and metrics.json in $(ISBI_LOGS)/miou_out/"

isbi-gpu:
	$(GPU_PY) train.py --dataset-path $(ISBI) --dataset-format medical --num-classes 2 \
		--model-path '' --train-split $(ISBI_SPLIT)/train.txt --val-split $(ISBI_SPLIT)/val.txt \
		--input-shape 512 512 --no-freeze-train --unfreeze-epoch $(ISBI_GPU_EPOCHS) \
		--unfreeze-batch-size 4 --init-lr 1e-3 --no-lr-fit --augment elastic --dice-loss \
		--precision bf16 --channels-last --save-best-by miou --eval-period 5 --num-workers 8 \
		--device cuda --name-classes cell membrane --save-dir $(ISBI_LOGS)_gpu
	$(GPU_PY) get_miou.py --dataset-path $(ISBI) --split $(ISBI_SPLIT)/val.txt --device cuda \
		--model-path $(ISBI_LOGS)_gpu/best_epoch_weights.pth --miou-out-path $(ISBI_LOGS)_gpu/miou_out
	@echo "Held-out mIoU above (best epoch by that same mIoU); results in $(ISBI_LOGS)_gpu/miou_out/"

clean:
	rm -rf logs miou_out img_out demo_data .pytest_cache .ruff_cache
