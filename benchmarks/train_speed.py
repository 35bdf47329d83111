"""Seconds per training step: the original's fp32 loop against train.py's engine.

The workload is the issue's: VGG UNet, 256x256, batch 2, CE + Dice, Adam, data loaded in the
main process (``--num-workers 0``), on generated 320x240 images::

    python -m benchmarks.train_speed --steps 5

"original" replays the reference's loop: its data pipeline (float64 one-hot built per sample,
see ``tests/reference_impl.py``), its losses on the one-hot target, fp32. "ours" runs
``train.py --benchmark`` with each precision setting. bf16 is skipped on CPUs without native
bf16 (no AVX512-BF16/AMX), where it is emulated and far slower than fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

import train
from nets.unet import Unet
from nets.unet_training import weights_init
from tests.reference_impl import ref_ce_loss, ref_collate, ref_dice_loss, ref_getitem
from utils.dataloader import UnetDataset, read_split
from utils.demo_data import make_demo_dataset
from utils.device import cpu_has_native_bf16


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


def original_seconds_per_step(root: Path, size: int, batch: int, steps: int) -> float:
    dataset = UnetDataset(read_split(root, "train"), (size, size), 4, True, root)
    loader = DataLoader(ReferenceData(dataset), batch_size=batch, collate_fn=ref_collate)
    model = Unet(num_classes=4)
    weights_init(model)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4, betas=(0.9, 0.999))
    weights = torch.ones(4)
    batches = iter(loader)
    for count in (2, steps):  # warm-up, then timed
        start = time.perf_counter()
        for _ in range(count):
            images, labels, one_hot = next(batches)
            optimizer.zero_grad()
            outputs = model(images)
            loss = ref_ce_loss(outputs, labels, weights, 4) + ref_dice_loss(outputs, one_hot)
            with torch.no_grad():
                ref_dice_loss(outputs, one_hot, hard_threshold=0.5)  # the f_score it logs
            loss.backward()
            optimizer.step()
        seconds = (time.perf_counter() - start) / count
    return seconds


def ours_seconds_per_step(root: Path, size: int, batch: int, steps: int, extra: list[str]):
    argv = [
        "--dataset-path", str(root), "--num-classes", "4", "--model-path", "",
        "--input-shape", str(size), str(size), "--no-freeze-train", "--dice-loss",
        "--unfreeze-batch-size", str(batch), "--num-workers", "0", "--benchmark", str(steps),
        "--save-dir", str(root / "logs"), *extra,
    ]  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train.main(argv)
    line = next(x for x in out.getvalue().splitlines() if x.startswith("benchmark:"))
    return float(line.split(": ")[-1].split(" s/step")[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row")
    parser.add_argument("--size", type=int, default=256, help="input height and width")
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_demo_dataset(Path(tmp) / "VOCdevkit", 2 * (args.steps + 3) * args.batch_size,
                                 size=(320, 240))  # fmt: skip
        # every image in train: the split must hold warm-up + timed steps
        splits = root / "VOC2007/ImageSets/Segmentation"
        (splits / "train.txt").write_text((splits / "trainval.txt").read_text())
        rows = [
            (
                "original fp32",
                original_seconds_per_step(root, args.size, args.batch_size, args.steps),
            )
        ]
        settings = [("ours fp32", []), ("ours fp32 + channels_last", ["--channels-last"])]
        if cpu_has_native_bf16() or torch.cuda.is_available():
            settings.append(
                ("ours bf16 + channels_last", ["--precision", "bf16", "--channels-last"])
            )
        for name, extra in settings:
            rows.append(
                (name, ours_seconds_per_step(root, args.size, args.batch_size, args.steps, extra))
            )
    base = rows[0][1]
    print(f"VGG UNet {args.size}x{args.size}, batch {args.batch_size}, CE + Dice, Adam, "
          f"num_workers 0, {args.steps} timed steps:")  # fmt: skip
    print(f"{'setting':<28} {'s/step':>7} {'img/s':>6} {'speed-up':>9}")
    for name, seconds in rows:
        print(
            f"{name:<28} {seconds:>7.2f} {args.batch_size / seconds:>6.2f} {base / seconds:>8.2f}x"
        )
    if not (cpu_has_native_bf16() or torch.cuda.is_available()):
        print("bf16 skipped: this CPU has no native bf16 (AVX512-BF16/AMX), it would be emulated")


if __name__ == "__main__":
    main()
