"""Counting on the device, on uniform and on skewed labels: the Dice/f-score per-class sums of
every training step (``class_sums``: compare-and-sum against scatter) and the confusion counts
of the mIoU (our ``scatter_add_`` against ``torch.bincount`` and a one-hot sum)::

    python -m benchmarks.counting --device cuda

On a GPU, scatters add into a few addresses with atomics, which serialise when most labels
fall in one of them, as real labels do (mostly background): the "skewed" rows put 90% of the
labels in class 0. ``bincount`` reads its output size back to the host (a sync); the one-hot sum
builds an (N*H*W, C*C+1) matrix. This prints ms per call of each, on a batch of 8 labels of
512x512 with 21 classes (the GPU recipe's shape) and with 2, and whether the ways agree.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch

from nets.functional import class_sums
from utils.utils_metrics import fast_hist


def by_bincount(labels: torch.Tensor, preds: torch.Tensor, n: int) -> torch.Tensor:
    keep = (labels >= 0) & (labels < n)
    return torch.bincount(n * labels[keep] + preds[keep], minlength=n * n).reshape(n, n)


def by_one_hot(labels: torch.Tensor, preds: torch.Tensor, n: int) -> torch.Tensor:
    index = torch.where((labels >= 0) & (labels < n), n * labels + preds, n * n)
    one_hot = torch.nn.functional.one_hot(index.reshape(-1), n * n + 1)
    return one_hot.sum(0)[:-1].reshape(n, n)


def milliseconds(function: Callable[[], object], device: torch.device, repeats: int) -> float:
    function()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats * 1e3


def make_labels(shape, n: int, skewed: bool, generator, device) -> torch.Tensor:
    """Labels in [0, n] (n: ignored), uniform or with 90% in class 0."""
    labels = torch.randint(0, n + 1, shape, generator=generator)
    if skewed:
        labels = torch.where(torch.rand(shape, generator=generator) < 0.9, 0, labels)
    return labels.to(device)


def dice_rows(labels: torch.Tensor, n: int, device, repeats: int) -> list[str]:
    """The two per-class sums of a Dice step (counts, and sums of the picked probabilities)."""
    flat = labels.reshape(-1)
    values = torch.rand(flat.shape, device=device)
    rows = []
    for name, compare in (("compare-and-sum", True), ("scatter", False)):
        ms = milliseconds(lambda c=compare: (class_sums(flat, n + 1, compare=c),
                                             class_sums(flat.clamp(max=n - 1), n, values, c)),
                          device, repeats)  # fmt: skip
        rows.append(f"{name} {ms:.3f} ms")
    same = torch.equal(
        class_sums(flat, n + 1, compare=True), class_sums(flat, n + 1, compare=False)
    )
    chosen = "compare-and-sum" if flat.is_cuda and n + 1 <= 32 else "scatter"
    counts = "the same counts" if same else "DIFFERENT counts"
    return [f"    dice class sums: {'; '.join(rows)} ({counts}; ours: {chosen})"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--batch", type=int, nargs=3, default=[8, 512, 512], metavar=("N", "H", "W")
    )
    parser.add_argument("--num-classes", type=int, nargs="+", default=[21, 2])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    print(f"counting over {'x'.join(map(str, args.batch))} labels on {device}:")
    for n in args.num_classes:
        for skewed in (False, True):
            labels = make_labels(args.batch, n, skewed, generator, device)
            preds = make_labels(args.batch, n - 1, skewed, generator, device)
            print(f"  {n} classes, {'skewed (90% class 0)' if skewed else 'uniform'} labels:")
            print("\n".join(dice_rows(labels, n, device, args.repeats)))
            expected = fast_hist(labels, preds, n)
            for name, function in (("scatter_add_ (ours)", fast_hist), ("bincount", by_bincount),
                                   ("one-hot-sum", by_one_hot)):  # fmt: skip
                same = torch.equal(function(labels, preds, n), expected)
                call = partial(function, labels, preds, n)
                ms = milliseconds(call, device, args.repeats)
                print(f"    confusion {name}: {ms:.3f} ms "
                      f"({'the same counts' if same else 'DIFFERENT counts'})")  # fmt: skip


if __name__ == "__main__":
    main()
