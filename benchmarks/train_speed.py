"""Seconds per training step: the original's loop against train.py's engine, on CPU or CUDA.

VGG UNet, CE + Dice, Adam, on generated images. The defaults follow the device: on the CPU
256x256, batch 2, 4 classes, data loaded in the main process (the README's CPU table); on CUDA
512x512, batch 8, 21 classes, 4 workers (the GPU table)::

    python -m benchmarks.train_speed --steps 5               # CPU
    python -m benchmarks.train_speed --device cuda --steps 20

"original" replays the reference's loop: its data pipeline (float64 one-hot built per sample,
see ``oracle/original.py``), its losses on the one-hot target, ``loss.item()`` and
``f_score.item()`` every step, in fp32 and (CUDA) with its fp16 switch (autocast + GradScaler).
"ours" runs ``train.py --benchmark`` in each precision and memory layout. "resident" is the
same model, loss and optimizer stepping on one batch already on the device, with nothing read
back: the floor the engine is measured against. bf16 is skipped on CPUs without native bf16.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

import train
from nets.unet import Unet
from nets.unet_training import SegmentationLoss, weights_init
from oracle.original import ref_ce_loss, ref_collate, ref_dice_loss, ref_getitem
from utils.data.datasets import UnetDataset, read_split
from utils.data.demo_data import make_demo_dataset
from utils.device import cpu_has_native_bf16, cpu_info, gpu_has_native_bf16, resolve_runtime

ROOT = Path(__file__).resolve().parents[1]


class ReferenceData(Dataset):
    """The original's samples: float64 image, label, float64 one-hot."""

    def __init__(self, dataset: UnetDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        d = self.dataset
        return ref_getitem(
            d.image_paths[i], d.label_paths[i], d.input_shape, d.num_classes, True, d.rng(i)
        )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def original_seconds_per_step(root: Path, args, device: torch.device, fp16: bool) -> float:
    """The reference's fit_one_epoch, step for step, on ``device``."""
    size, classes = args.size, args.num_classes
    dataset = UnetDataset(read_split(root, "train"), (size, size), classes, True, root)
    loader = DataLoader(ReferenceData(dataset), batch_size=args.batch_size,
                        num_workers=args.num_workers, collate_fn=ref_collate,
                        pin_memory=device.type == "cuda")  # fmt: skip
    torch.manual_seed(0)
    model = Unet(num_classes=classes)
    weights_init(model)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4, betas=(0.9, 0.999))
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    weights = torch.ones(classes, device=device)
    batches = iter(loader)
    for count in (2, args.steps):  # warm-up, then timed
        synchronize(device)
        start = time.perf_counter()
        for _ in range(count):
            images, labels, one_hot = (t.to(device) for t in next(batches))
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
                outputs = model(images)
                loss = ref_ce_loss(outputs, labels, weights, classes)
                loss = loss + ref_dice_loss(outputs, one_hot)
                with torch.no_grad():
                    score = ref_dice_loss(outputs, one_hot, hard_threshold=0.5)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss.item(), score.item()  # the original logs both every step
        synchronize(device)
        seconds = (time.perf_counter() - start) / count
    return seconds


def ours_seconds_per_step(root: Path, args, device: torch.device, extra: list[str]) -> float:
    argv = [
        "--dataset-path", str(root), "--num-classes", str(args.num_classes), "--model-path", "",
        "--input-shape", str(args.size), str(args.size), "--no-freeze-train", "--dice-loss",
        "--unfreeze-batch-size", str(args.batch_size), "--num-workers", str(args.num_workers),
        "--benchmark", str(args.steps), "--device", device.type,
        "--save-dir", str(root / "logs"), *extra,
    ]  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train.main(argv)
    line = next(x for x in out.getvalue().splitlines() if x.startswith("benchmark:"))
    return float(line.split(": ")[-1].split(" s/step")[0])


def resident_seconds_per_step(args, device: torch.device, precision: str, channels_last: bool):
    """The same model, loss and optimizer on one batch already on the device; no reads back."""
    runtime = resolve_runtime(device.type, precision, channels_last=channels_last)
    torch.manual_seed(0)
    model = Unet(num_classes=args.num_classes)
    weights_init(model, "kaiming")
    model = runtime.prepare(model).train()
    fused = device.type == "cuda" or None
    optimizer = torch.optim.Adam(model.parameters(), 1e-4, fused=fused)
    scaler = runtime.grad_scaler()
    criterion = SegmentationLoss(args.num_classes, dice=True).to(device)
    shape = (args.batch_size, 3, args.size, args.size)
    images = runtime.model_input(torch.randint(0, 256, shape, dtype=torch.uint8))
    labels = torch.randint(0, args.num_classes, (shape[0], *shape[2:]), device=device)
    for count in (2, args.steps):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            with runtime.autocast():
                outputs = model(images)
            loss = criterion(outputs, labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        synchronize(device)
        seconds = (time.perf_counter() - start) / count
    return seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (default: 5)")
    parser.add_argument("--size", type=int, help="input height and width (256 CPU, 512 CUDA)")
    parser.add_argument("--batch-size", type=int, help="images per step (2 CPU, 8 CUDA)")
    parser.add_argument("--num-classes", type=int, help="classes, at least 4 (4 CPU, 21 CUDA)")
    parser.add_argument("--num-workers", type=int, help="loader processes (0 CPU, 4 CUDA)")
    parser.add_argument(
        "--whole-run",
        action="store_true",
        help="time whole processes instead of steps: the original's training script against "
        "train.py, 2 epochs of 16 images with no evaluation, beside the ceiling the network "
        "alone allows",
    )
    parser.add_argument(
        "--precision", help="--whole-run: train.py's precision (default: bf16 + channels-last "
        "where it is native, else fp32)")  # fmt: skip
    parser.add_argument(
        "--images", type=int, default=16, help="--whole-run: training images (default: 16)"
    )
    args = parser.parse_args(argv)
    args.device = resolve_runtime(args.device).device
    cuda = args.device.type == "cuda"
    for name, on_cpu, on_cuda in (("size", 256, 512), ("batch_size", 2, 8),
                                  ("num_classes", 4, 21), ("num_workers", 0, 4)):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, on_cuda if cuda else on_cpu)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.whole_run:
        whole_run(args)
        return
    device = args.device
    cuda = device.type == "cuda"
    halves = (["bf16"] if not cuda or gpu_has_native_bf16() else []) + ["fp16"] * cuda
    if not cuda and not cpu_has_native_bf16():
        halves = []
    settings = [(p, cl) for p in ["fp32", *halves] for cl in (False, True)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        image_size = (500, 375) if args.size > 256 else (320, 240)
        count = 2 * (args.steps + 3) * args.batch_size
        root = make_demo_dataset(Path(tmp) / "VOCdevkit", count, size=image_size)
        # every image in train: the split must hold warm-up + timed steps
        splits = root / "VOC2007/ImageSets/Segmentation"
        (splits / "train.txt").write_text((splits / "trainval.txt").read_text())
        for fp16 in (False, True) if cuda else (False,):
            name = f"original {'fp16 (its --fp16)' if fp16 else 'fp32'}"
            rows.append((name, original_seconds_per_step(root, args, device, fp16), None))
        for precision, channels_last in settings:
            extra = ["--precision", precision] + ["--channels-last"] * channels_last
            label = f"{precision}{' + channels_last' if channels_last else ''}"
            ours = ours_seconds_per_step(root, args, device, extra)
            resident = None
            if cuda or (precision, channels_last) == ("fp32", False):
                resident = resident_seconds_per_step(args, device, precision, channels_last)
            rows.append((f"ours {label}", ours, resident))
    print_rows(args, rows, cuda, not halves and not cuda)


def print_rows(args: argparse.Namespace, rows: list, cuda: bool, no_bf16: bool) -> None:
    base = rows[0][1]
    device = args.device
    print(f"VGG UNet {args.size}x{args.size}, batch {args.batch_size}, {args.num_classes} "
          f"classes, CE + Dice, Adam, {args.num_workers} workers, {args.steps} timed steps, "
          f"on {torch.cuda.get_device_name(device) if cuda else 'the CPU'}:")  # fmt: skip
    print(f"{'setting':<30} {'s/step':>7} {'img/s':>7} {'vs original':>11} "
          f"{'resident s/step':>15} {'engine/resident':>15}")  # fmt: skip
    for name, seconds, resident in rows:
        extra = f"{resident:>15.3f} {seconds / resident:>14.2f}x" if resident else ""
        print(f"{name:<30} {seconds:>7.3f} {args.batch_size / seconds:>7.2f} "
              f"{base / seconds:>10.2f}x {extra}")  # fmt: skip
    if no_bf16:
        print("bf16 skipped: this CPU has no native bf16 (AVX512-BF16/AMX), it would be emulated")
    if os.environ.get("TRAIN_SPEED_JSON"):
        Path(os.environ["TRAIN_SPEED_JSON"]).write_text(json.dumps(
            {"args": {**vars(args), "device": str(device)}, "rows": rows}, indent=2))  # fmt: skip


#: The whole-run workload: 2 epochs of generated images, no validation.
WHOLE_RUN_EPOCHS = 2


def timed_process(command: list[str]) -> tuple[float, str]:
    """Wall seconds of a whole process (start-up to exit) and what it printed."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def whole_run(args: argparse.Namespace) -> None:
    """The original's whole training script against train.py's, in one run, each process timed
    from its start to its exit, beside the network-only ceiling: ours/original can reach at
    most the ratio of the original's fp32 step to ours, both resident."""
    cuda = args.device.type == "cuda"
    native = gpu_has_native_bf16() if cuda else cpu_has_native_bf16()
    precision = args.precision or ("bf16" if native else "fp32")
    channels_last = cuda or precision == "bf16"
    common = ["--num-classes", str(args.num_classes), "--num-workers", str(args.num_workers)]
    with tempfile.TemporaryDirectory() as tmp:
        root = make_demo_dataset(Path(tmp) / "VOCdevkit", args.images, size=(args.size,) * 2)
        splits = root / "VOC2007/ImageSets/Segmentation"
        (splits / "train.txt").write_text((splits / "trainval.txt").read_text())
        (splits / "val.txt").write_text("")
        original, _ = timed_process([
            sys.executable, "-m", "oracle.original_train", "--dataset-path", str(root), *common,
            "--input-shape", str(args.size), "--epochs", str(WHOLE_RUN_EPOCHS), "--batch-size",
            str(args.batch_size), "--dice-loss", "--save-dir", f"{tmp}/original",
        ])  # fmt: skip
        ours, printed = timed_process([
            sys.executable, "train.py", "--dataset-path", str(root), *common, "--model-path", "",
            "--input-shape", str(args.size), str(args.size), "--no-freeze-train", "--dice-loss",
            "--unfreeze-epoch", str(WHOLE_RUN_EPOCHS), "--unfreeze-batch-size",
            str(args.batch_size), "--no-eval-flag", "--device", args.device.type,
            "--precision", precision, "--channels-last" if channels_last else "--no-channels-last",
            "--save-dir", f"{tmp}/ours",
        ])  # fmt: skip
    fp32 = resident_seconds_per_step(args, args.device, "fp32", cuda)
    fast = resident_seconds_per_step(args, args.device, precision, channels_last)
    ceiling, reached = fp32 / fast, original / ours
    split = next((line for line in printed.splitlines() if line.startswith("Time:")), "")
    print(f"Whole runs: VGG UNet {args.size}x{args.size}, {WHOLE_RUN_EPOCHS} epochs of "
          f"{args.images} images, batch {args.batch_size}, CE + Dice, no evaluation, "
          f"{args.num_workers} workers, on {cpu_info()[0] or 'this CPU'}"
          f"{' / ' + torch.cuda.get_device_name(args.device) if cuda else ''}:")  # fmt: skip
    print(f"  the original's script, fp32: {original:.1f} s")
    print(f"  train.py, {precision}{' + channels-last' if channels_last else ''}: {ours:.1f} s "
          f"(x{reached:.2f})")  # fmt: skip
    print(f"  the network alone, resident steps: fp32 {fp32:.3f} s, {precision} {fast:.3f} s "
          f"(x{ceiling:.2f}, the ceiling)")  # fmt: skip
    print(f"  train.py reaches {reached / ceiling:.2f} of the ceiling")
    print(f"  train.py's {split}")


if __name__ == "__main__":
    main()
