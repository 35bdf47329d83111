#!/usr/bin/env bash
# The GPU check: estimated at 4 minutes on one GPU, checkpoint writes included (this version
# has not run on a GPU yet); no network, nothing to install. It uses whatever python3 has torch
# (2.11 or newer), numpy, Pillow, OpenCV, SciPy, tqdm and pytest; PyYAML, TensorBoard,
# matplotlib, onnx, onnxruntime and torchvision are optional (what needs them is skipped, and
# said so; the recipe files are read without PyYAML).
#
#   DATA=gpu_data bash benchmarks/gpu_check.sh    # DATA: a copy of ../shared/data (for step 4)
#   ISBI_EPOCHS=0 bash benchmarks/gpu_check.sh    # without the data: steps 1-3 and 5
#
# Steps: 1 the cuda tests, 2 the training step against the original's, 3 prediction against
# the original's, 4 the ISBI 2012 recipe at 512x512 for ISBI_EPOCHS epochs, 5 the confusion
# counts three ways. Each step's whole output is kept in $OUT/<step>.txt; a step that fails
# prints its last lines. It ends with a table: each step, its figure, pass or fail.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu_check_out}
DATA=${DATA:-../shared/data}
ISBI_EPOCHS=${ISBI_EPOCHS:-20}
ISBI="$DATA/isbi2012_cells"
export UNET_SHARED_DATA="$DATA"  # the tests' and benchmarks' street.jpg and ISBI images

# Before anything: the modules, the GPU and the data, each in one sentence.
$PY - <<'PYTHON' || exit 2
import importlib.util
import sys

required = ["torch", "numpy", "PIL", "cv2", "scipy", "tqdm", "pytest"]
optional = {"yaml": "recipe-file tests (recipes still read)", "tensorboard": "TensorBoard logs",
            "matplotlib": "curves and charts", "onnx": "ONNX tests",
            "onnxruntime": "ONNX tests", "torchvision": "torchvision comparisons"}
missing = [name for name in required if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"gpu_check: {sys.executable} lacks {', '.join(missing)}; install them, or set "
             "PYTHON= to a python that has them.")
import torch

if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA GPU here; run it on a GPU "
             "machine (nvidia-smi should list one).")
absent = [f"{name} ({why})" for name, why in optional.items()
          if importlib.util.find_spec(name) is None]
print(f"gpu_check: torch {torch.__version__} on {torch.cuda.get_device_name()}; "
      f"{'without ' + ', '.join(absent) + ': skipped' if absent else 'every optional module'}")
PYTHON
if [ "$ISBI_EPOCHS" -gt 0 ] && [ ! -d "$ISBI/Images" ]; then
  echo "gpu_check: DATA=$DATA holds no isbi2012_cells/Images; copy ../shared/data there and" \
    "give DATA=<that folder>, or skip step 4 with ISBI_EPOCHS=0."
  exit 2
fi
mkdir -p "$OUT"
: > "$OUT/steps.txt"
status=0

step() {  # step NAME COMMAND...: run it, keep its output, note its exit code and seconds
  local name=$1
  shift
  echo "== $name"
  local start=$SECONDS
  "$@" > "$OUT/$name.txt" 2>&1
  local code=$?
  echo "$name $code $((SECONDS - start))" >> "$OUT/steps.txt"
  if [ "$code" -ne 0 ]; then
    status=1
    echo "-- $name failed (exit $code); the last lines of $OUT/$name.txt:"
    tail -n 40 "$OUT/$name.txt"
  fi
}

step cuda_tests $PY -m pytest -m cuda -q -p no:cacheprovider --basetemp="$OUT/pytest_tmp" \
  -o tmp_path_retention_policy=none
step train_speed env TRAIN_SPEED_JSON="$OUT/train_speed.json" \
  $PY -m benchmarks.train_speed --device cuda --steps 10
step predict_speed env PREDICT_SPEED_JSON="$OUT/predict_speed.json" \
  $PY -m benchmarks.predict_speed --device cuda --repeats 3 --eval-images 96 --eval-size 512 512
if [ "$ISBI_EPOCHS" -gt 0 ]; then
  # the GPU recipe, shortened; weights files every 10 epochs (each epoch still writes
  # last_epoch_weights.pth and checkpoint_last.pth, about 0.4 GB)
  every=$((ISBI_EPOCHS < 10 ? ISBI_EPOCHS : 10))
  step isbi_train $PY train.py --config recipes/isbi2012/gpu.yaml --dataset-path "$ISBI" \
    --unfreeze-epoch "$ISBI_EPOCHS" --eval-period "$every" --save-period "$every" \
    --save-dir "$OUT/isbi"
  step isbi_miou $PY get_miou.py --dataset-path "$ISBI" --split recipes/isbi2012/val.txt \
    --device cuda --model-path "$OUT/isbi/last_epoch_weights.pth" \
    --miou-out-path "$OUT/isbi/miou_out"
fi
step counting $PY -m benchmarks.counting --device cuda

echo "== summary"
$PY - "$OUT" <<'PYTHON'
import json
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])


def text(name):
    path = out / name
    return path.read_text(errors="replace") if path.exists() else ""


def figure(name):
    if name == "cuda_tests":
        found = re.findall(r"\d+ (?:passed|failed|skipped|errors?)", text("cuda_tests.txt"))
        return ", ".join(found) or "no result"
    if name == "train_speed" and text("train_speed.json"):
        rows = {row[0]: row[1] for row in json.loads(text("train_speed.json"))["rows"]}
        ours = min((s, n) for n, s in rows.items() if n.startswith("ours"))
        return f"{ours[1]} {ours[0]:.3f} s/step, original fp32 {rows['original fp32']:.3f}"
    if name == "predict_speed" and text("predict_speed.json"):
        rows = json.loads(text("predict_speed.json"))["rows"]
        miou = next((r for r in rows if r[0].startswith("get_miou_png")), None)
        return f"get_miou_png {miou[1]:.1f} ms (original {miou[2]:.1f})" if miou else "-"
    if name == "isbi_miou":
        found = re.findall(r"===> mIoU: [\d.]+", text("isbi_miou.txt"))
        return found[-1].removeprefix("===> ") if found else "no mIoU"
    if name == "counting":
        return "; ".join(re.findall(r"(\S+(?: \(ours\))?: [\d.]+ ms)", text("counting.txt")))
    return ""


print(f"{'step':<14} {'result':<6} {'s':>5}  figure")
for line in text("steps.txt").splitlines():
    name, code, seconds = line.split()
    result = "pass" if code == "0" else f"FAIL {code}"
    print(f"{name:<14} {result:<6} {seconds:>5}  {figure(name)}")
PYTHON
exit $status
