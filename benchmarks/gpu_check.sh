#!/usr/bin/env bash
# The GPU check, about 5 minutes on one GPU, with no network and nothing to install: it uses
# whatever python3 has torch (2.11 or newer), opencv, scipy, tqdm, onnx and pytest.
#
#   DATA=gpu_data bash benchmarks/gpu_check.sh      # DATA: a copy of ../shared/data
#
# In order: the cuda tests, the training-step benchmark, the prediction benchmark, the ISBI
# 2012 recipe at 512x512 for ISBI_EPOCHS epochs, then one summary table. Everything it prints
# is also kept in $OUT (default gpu_check_out/).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export UNET_SHARED_DATA=${DATA:-../shared/data}
OUT=${OUT:-gpu_check_out}
ISBI_EPOCHS=${ISBI_EPOCHS:-40}
mkdir -p "$OUT"
status=0

echo "== 1/4 pytest -m cuda"
$PY -m pytest -m cuda -q -p no:cacheprovider -o tmp_path_retention_policy=none 2>&1 \
  | tee "$OUT/pytest.txt" | tail -n 15 || status=1

echo "== 2/4 training step: the original's loop against ours"
TRAIN_SPEED_JSON="$OUT/train_speed.json" $PY -m benchmarks.train_speed --device cuda \
  --steps 20 2>/dev/null | tee "$OUT/train_speed.txt" || status=1

echo "== 3/4 prediction: the original's pipeline against ours"
PREDICT_SPEED_JSON="$OUT/predict_speed.json" $PY -m benchmarks.predict_speed --device cuda \
  --repeats 5 --eval-images 200 --eval-size 512 512 2>/dev/null \
  | grep -v "model, and classes" | tee "$OUT/predict_speed.txt" || status=1

echo "== 4/4 ISBI 2012 at 512x512, bf16 + channels-last, $ISBI_EPOCHS epochs"
ISBI="$UNET_SHARED_DATA/isbi2012_cells"
start=$(date +%s)
$PY train.py --dataset-path "$ISBI" --dataset-format medical --num-classes 2 --model-path '' \
  --train-split recipes/isbi2012/train.txt --val-split recipes/isbi2012/val.txt \
  --input-shape 512 512 --no-freeze-train --unfreeze-epoch "$ISBI_EPOCHS" \
  --unfreeze-batch-size 4 --init-lr 1e-3 --no-lr-fit --augment flip --dice-loss \
  --eval-period 10 --num-workers 4 --precision bf16 --channels-last --device cuda \
  --save-dir "$OUT/isbi" > "$OUT/isbi_train.txt" 2>&1 || status=1
$PY get_miou.py --dataset-path "$ISBI" --dataset-format medical --num-classes 2 \
  --split recipes/isbi2012/val.txt --input-shape 512 512 --name-classes cell membrane \
  --model-path "$OUT/isbi/last_epoch_weights.pth" --miou-out-path "$OUT/isbi/miou_out" \
  --device cuda > "$OUT/isbi_miou.txt" 2>&1 || status=1
echo "$(( $(date +%s) - start )) s" > "$OUT/isbi_seconds.txt"

echo "== summary"
$PY - "$OUT" <<'PYTHON'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
def read(name):
    path = out / name
    return path.read_text() if path.exists() else ""

lines = [x for x in read("pytest.txt").splitlines() if any(w in x for w in (" passed", " failed", " skipped", "no tests ran"))]
print(f"cuda tests: {lines[-1] if lines else 'no result'}")
if read("train_speed.json"):
    for name, seconds, resident in json.loads(read("train_speed.json"))["rows"]:
        ratio = f", {seconds / resident:.2f}x the resident step" if resident else ""
        print(f"train step  {name:<28} {seconds:.3f} s{ratio}")
if read("predict_speed.json"):
    for name, ours, original in json.loads(read("predict_speed.json"))["rows"]:
        print(f"predict  {name:<62} {ours:8.1f} ms (original {original:8.1f} ms)")
miou = [x for x in read("isbi_miou.txt").splitlines() if x.startswith("===> mIoU")]
curve = next(out.glob("isbi/loss_*/epoch_miou.txt"), None)
print(f"ISBI 512x512: {miou[-1] if miou else 'no result'} in {read('isbi_seconds.txt').strip()}"
      f"; in-training mIoU {curve.read_text().split() if curve else []}")
PYTHON
exit $status
