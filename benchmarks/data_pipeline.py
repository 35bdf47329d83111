"""Time the training data pipeline (``__getitem__`` + collate, one process) against the original's.

The original's per-sample work is replayed by the test oracle ``oracle/original.py``
(full-size resize, float64 ``/255``, a float64 ``np.eye`` one-hot, float tensors in collate)
on the same files, so both columns are measured on this machine in one run::

    python -m benchmarks.data_pipeline --input-shape 512 512 --num-classes 21
    python -m benchmarks.data_pipeline --augment elastic --image-size 512 512 --input-shape 160 160
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from oracle.original import ref_collate, ref_getitem
from utils.data.augment import AUGMENTATIONS
from utils.data.datasets import UnetDataset, unet_dataset_collate
from utils.data.demo_data import make_sample


def time_per_sample(steps, num_samples: int, batch_size: int, repeats: int = 5) -> list[float]:
    """Seconds per sample of each ``step(indices)``: the best of ``repeats`` interleaved passes.

    Passes alternate between the steps so that both meet the same machine, and the best pass
    is the least disturbed by everything else running, as in ``timeit``.
    """
    best = [float("inf")] * len(steps)
    for step in steps:
        step(list(range(batch_size)))  # warm-up
    for _ in range(repeats):
        for k, step in enumerate(steps):
            start = time.perf_counter()
            for first in range(0, num_samples, batch_size):
                step([i % num_samples for i in range(first, first + batch_size)])
            best[k] = min(best[k], (time.perf_counter() - start) / num_samples)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-shape", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--image-size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"))
    parser.add_argument("--num-samples", type=int, default=40, help="samples timed per row")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--augment", choices=tuple(AUGMENTATIONS), default="reference",
                        help="our training augmentation (the original's is its own)")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a data-loader worker's view

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for folder in ("VOC2007/JPEGImages", "VOC2007/SegmentationClass"):
            (root / folder).mkdir(parents=True)
        rng = np.random.default_rng(0)
        names = [f"{i:03d}" for i in range(8)]
        for name in names:
            image, label = make_sample(rng, *args.image_size)
            image.save(root / f"VOC2007/JPEGImages/{name}.jpg", quality=90)
            label.save(root / f"VOC2007/SegmentationClass/{name}.png")
        names = [names[i % len(names)] for i in range(args.num_samples)]

        print(
            f"{args.image_size[0]}x{args.image_size[1]} JPEG -> {args.input_shape[0]}x"
            f"{args.input_shape[1]}, {args.num_classes} classes, batch {args.batch_size}, "
            f"one process, our training augmentation {args.augment}, ms per sample:"
        )
        print(f"{'mode':<6} {'original':>9} {'ours':>7} {'speed-up':>9}")
        for train in (True, False):
            dataset = UnetDataset(names, args.input_shape, args.num_classes, train, root,
                                  augment=args.augment)  # fmt: skip

            def original_step(indices, d=dataset):
                samples = [
                    ref_getitem(
                        d.image_paths[i],
                        d.label_paths[i],
                        d.input_shape,
                        d.num_classes,
                        d.train,
                        d.rng(i),
                    )
                    for i in indices
                ]
                return ref_collate(samples)

            def our_step(indices, d=dataset):
                return unet_dataset_collate([d[i] for i in indices])

            original, ours = time_per_sample(
                [original_step, our_step], args.num_samples, args.batch_size
            )
            print(
                f"{'train' if train else 'val':<6} {original * 1e3:>9.1f} {ours * 1e3:>7.1f} "
                f"{original / ours:>8.1f}x"
            )


if __name__ == "__main__":
    main()
