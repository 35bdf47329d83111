#!/usr/bin/env bash
# The GPU check, within 8 minutes on one GPU: every step has a time limit (seconds, below), and
# their sum with the preflight is under 480 s. No network, nothing to install. It uses whatever
# python3 has torch (2.11 or newer), numpy, Pillow, OpenCV, SciPy, tqdm and pytest; PyYAML,
# TensorBoard, matplotlib, onnx, onnxruntime and torchvision are optional (what needs them is
# skipped, and said so; the recipe files are read without PyYAML).
#
#   DATA=gpu_data bash benchmarks/gpu_check.sh    # DATA: a copy of ../shared/data (for step 4)
#   ISBI_EPOCHS=0 bash benchmarks/gpu_check.sh    # skip step 4
#   DEVICE=cpu bash benchmarks/gpu_check.sh       # a rehearsal on the CPU, at toy sizes
#
# Steps: 1 the cuda tests, 2 the training step against the original's, 3 prediction against
# the original's, 4 the ISBI 2012 recipe at 512x512 for ISBI_EPOCHS epochs (needs DATA; without
# it the step is skipped, saying so), 5 the counting of the Dice loss and the mIoU. Each step's
# whole output is kept in $OUT/<step>.txt, its time is printed as it ends, and a step that fails
# prints its last lines. It ends with a table: each step, pass, fail or skipped, its seconds and
# its figure.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu_check_out}
DATA=${DATA:-../shared/data}
DEVICE=${DEVICE:-cuda}
ISBI_EPOCHS=${ISBI_EPOCHS:-$([ "$DEVICE" = cuda ] && echo 20 || echo 2)}  # 2 in a rehearsal
ISBI="$DATA/isbi2012_cells"
export UNET_SHARED_DATA="$DATA"  # the tests' and benchmarks' street.jpg and ISBI images

# Before anything: the modules, the GPU (with what torch and the driver say when torch sees
# none) and the shared memory the DataLoader workers pass batches through.
DEVICE=$DEVICE $PY - <<'PYTHON' || exit 2
import importlib.util
import os
import shutil
import subprocess
import sys
import warnings

required = ["torch", "numpy", "PIL", "cv2", "scipy", "tqdm", "pytest"]
optional = {"yaml": "recipe-file tests (recipes still read)", "tensorboard": "TensorBoard logs",
            "matplotlib": "curves and charts", "onnx": "ONNX tests",
            "onnxruntime": "ONNX tests", "torchvision": "torchvision comparisons"}
missing = [name for name in required if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"gpu_check: {sys.executable} lacks {', '.join(missing)}; install them, or set "
             "PYTHON= to a python that has them.")
import torch

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    available = torch.cuda.is_available()
said = " ".join(str(w.message).split()) if caught else "no warning"
if shutil.which("nvidia-smi"):
    query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
    found = subprocess.run(query, capture_output=True, text=True)
    driver = (found.stdout.strip() or found.stderr.strip() or "no answer").splitlines()[0]
else:
    driver = "nvidia-smi not found"
cuda = f"torch {torch.__version__} built for CUDA {torch.version.cuda}; driver: {driver}"
if os.environ["DEVICE"] == "cuda" and not available:
    sys.exit(f"gpu_check: torch sees no CUDA GPU here ({cuda}; torch says: {said}); run it on a "
             "GPU machine whose driver supports that CUDA version (nvidia-smi should list a GPU).")
shm = shutil.disk_usage("/dev/shm").total / 2**20 if os.path.isdir("/dev/shm") else 0
note = ("; under 1 GiB: DataLoader workers may die with 'Bus error', lower --num-workers or "
        "give the container --shm-size" if shm < 1024 else "")
absent = [f"{name} ({why})" for name, why in optional.items()
          if importlib.util.find_spec(name) is None]
device = torch.cuda.get_device_name() if available and os.environ["DEVICE"] == "cuda" else "CPU"
print(f"gpu_check on {device}: {cuda}; /dev/shm {shm:.0f} MiB{note}; "
      f"{'without ' + ', '.join(absent) + ': skipped' if absent else 'every optional module'}")
PYTHON
mkdir -p "$OUT"
: > "$OUT/steps.txt"
status=0

step() {  # step NAME LIMIT COMMAND...: run it for at most LIMIT (x SCALE) seconds, keep its
  local name=$1 limit=$(($2 * SCALE))  # output, note its exit code and seconds
  shift 2
  echo "== $name (at most $limit s)"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local code=$?
  local seconds=$((SECONDS - start))
  echo "$name $code $seconds" >> "$OUT/steps.txt"
  if [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then
    status=1
    echo "-- $name ran past its $limit s and was stopped; the last lines of $OUT/$name.txt:"
    tail -n 20 "$OUT/$name.txt"
  elif [ "$code" -ne 0 ]; then
    status=1
    echo "-- $name failed (exit $code) after $seconds s; the last lines of $OUT/$name.txt:"
    tail -n 40 "$OUT/$name.txt"
  else
    echo "   done in $seconds s"
  fi
}

skip() {  # skip NAME WHY
  echo "== $1: skipped, $2"
  echo "$1 skipped 0 $2" >> "$OUT/steps.txt"
}

if [ "$DEVICE" = cuda ]; then  # the sizes of the GPU tables
  SCALE=1
  TRAIN=(--steps 6)
  PREDICT=(--repeats 2 --eval-images 64 --eval-size 512 512)
  ISBI_SIZE=()
  COUNT=()
else  # a rehearsal: every step's wiring, at toy sizes, with 4 times the time on a CPU
  SCALE=4
  TRAIN=(--size 64 --steps 1)
  PREDICT=(--input-shape 64 64 --num-classes 3 --repeats 1 --eval-images 4)
  ISBI_SIZE=(--input-shape 64 64 --precision fp32 --num-workers 0)
  COUNT=(--batch 2 64 64 --repeats 2)
fi

step cuda_tests 150 $PY -m pytest -m cuda -q -p no:cacheprovider --basetemp="$OUT/pytest_tmp" \
  -o tmp_path_retention_policy=none
step train_speed 100 env TRAIN_SPEED_JSON="$OUT/train_speed.json" \
  $PY -m benchmarks.train_speed --device "$DEVICE" "${TRAIN[@]}"
step predict_speed 80 env PREDICT_SPEED_JSON="$OUT/predict_speed.json" \
  $PY -m benchmarks.predict_speed --device "$DEVICE" "${PREDICT[@]}"
if [ "$ISBI_EPOCHS" -le 0 ]; then
  skip isbi_train "ISBI_EPOCHS=$ISBI_EPOCHS"
elif [ ! -d "$ISBI/Images" ]; then
  skip isbi_train "DATA=$DATA holds no isbi2012_cells/Images (copy ../shared/data there)"
else
  # the GPU recipe, shortened; weights files every 10 epochs (each epoch writes
  # last_epoch_weights.pth and checkpoint_last.pth, about 0.4 GB)
  every=$((ISBI_EPOCHS < 10 ? ISBI_EPOCHS : 10))
  step isbi_train 90 $PY train.py --config recipes/isbi2012/gpu.yaml --dataset-path "$ISBI" \
    --unfreeze-epoch "$ISBI_EPOCHS" --eval-period "$every" --save-period "$every" \
    --device "$DEVICE" "${ISBI_SIZE[@]}" --save-dir "$OUT/isbi"
  step isbi_miou 20 $PY get_miou.py --dataset-path "$ISBI" --split recipes/isbi2012/val.txt \
    --device "$DEVICE" --model-path "$OUT/isbi/last_epoch_weights.pth" \
    --miou-out-path "$OUT/isbi/miou_out"
fi
step counting 20 $PY -m benchmarks.counting --device "$DEVICE" "${COUNT[@]}"

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
        found = re.findall(r"\d+ (?:passed|failed|skipped|deselected|errors?)",
                           text("cuda_tests.txt"))
        return ", ".join(found) or "no result"
    if name == "train_speed" and text("train_speed.json"):
        rows = {row[0]: row[1] for row in json.loads(text("train_speed.json"))["rows"]}
        ours = min((s, n) for n, s in rows.items() if n.startswith("ours"))
        return f"{ours[1]} {ours[0]:.3f} s/step, original fp32 {rows['original fp32']:.3f}"
    if name == "predict_speed" and text("predict_speed.json"):
        rows = json.loads(text("predict_speed.json"))["rows"]
        miou = next((r for r in rows if r[0].startswith("get_miou_png")), None)
        return f"get_miou_png {miou[1]:.1f} ms (original {miou[2]:.1f})" if miou else "-"
    if name == "isbi_train":  # where the run's wall time went
        found = re.findall(r"^Time: .*$", text("isbi_train.txt"), re.MULTILINE)
        return found[-1] if found else "no time line"
    if name == "isbi_miou":
        found = re.findall(r"===> mIoU: [\d.]+", text("isbi_miou.txt"))
        return found[-1].removeprefix("===> ") if found else "no mIoU"
    if name == "counting":
        found = re.findall(r"skewed.*\n\s+dice class sums: (.*)", text("counting.txt"))
        return f"skewed dice sums: {found[0]}" if found else "no result"
    return ""


print(f"{'step':<14} {'result':<8} {'s':>5}  figure")
total = 0
for line in text("steps.txt").splitlines():
    name, code, seconds, *why = line.split()
    total += int(seconds)
    if code == "skipped":
        result, shown = "skipped", " ".join(why)
    else:
        stopped = code in ("124", "137")
        result = "pass" if code == "0" else ("TIMEOUT" if stopped else f"FAIL {code}")
        shown = figure(name)
    print(f"{name:<14} {result:<8} {seconds:>5}  {shown}")
print(f"{'all steps':<14} {'':<8} {total:>5}")
PYTHON
exit $status
