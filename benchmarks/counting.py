"""Confusion counts on the device: our ``scatter_add_`` against ``torch.bincount`` and a one-hot
sum, for the in-training f-score and mIoU, on CPU or CUDA::

    python -m benchmarks.counting --device cuda

``scatter_add_`` adds N*H*W ones into C*C+1 slots: on a GPU that is atomics on a handful of
addresses, which can serialise. ``bincount`` reads its output size back to the host (a sync);
the one-hot sum builds an (N*H*W, C+1) matrix. This prints ms per call of each, on a batch of
8 labels of 512x512 with 21 classes (the GPU recipe's shape), and whether they agree.
"""

from __future__ import annotations

import argparse
import time

import torch

from utils.utils_metrics import fast_hist


def by_bincount(labels: torch.Tensor, preds: torch.Tensor, n: int) -> torch.Tensor:
    keep = (labels >= 0) & (labels < n)
    return torch.bincount(n * labels[keep] + preds[keep], minlength=n * n).reshape(n, n)


def by_one_hot(labels: torch.Tensor, preds: torch.Tensor, n: int) -> torch.Tensor:
    index = torch.where((labels >= 0) & (labels < n), n * labels + preds, n * n)
    one_hot = torch.nn.functional.one_hot(index.reshape(-1), n * n + 1)
    return one_hot.sum(0)[:-1].reshape(n, n)


def milliseconds(function, device: torch.device, repeats: int) -> float:
    function()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--batch", type=int, nargs=3, default=[8, 512, 512], metavar=("N", "H", "W")
    )
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    device, n = torch.device(args.device), args.num_classes
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, n + 1, args.batch, generator=generator).to(device)  # n: ignored
    preds = torch.randint(0, n, args.batch, generator=generator).to(device)
    expected = fast_hist(labels, preds, n)
    print(f"confusion counts of {'x'.join(map(str, args.batch))} labels, {n} classes, {device}:")
    for name, function in (("scatter_add_ (ours)", fast_hist), ("bincount", by_bincount),
                           ("one-hot-sum", by_one_hot)):  # fmt: skip
        same = torch.equal(function(labels, preds, n), expected)
        ms = milliseconds(lambda f=function: f(labels, preds, n), device, args.repeats)
        print(f"  {name}: {ms:.3f} ms ({'the same counts' if same else 'DIFFERENT counts'})")


if __name__ == "__main__":
    main()
