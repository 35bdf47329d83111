"""The training engine: one training epoch, one evaluation, for every precision and for DDP.

A step never waits on the GPU: the loss and f-score are summed on the device, and the host
reads them (one transfer) only when the progress bar refreshes and at the end of the epoch: at
most every :data:`REFRESH_SECONDS` with one process, every :data:`SYNC_STEPS` steps under
torchrun, where every rank reads at the same steps. The NaN/Inf check happens at those reads,
from the first bad step the device has noted, so it still names the exact step; under torchrun
the ranks share what they noted, so a NaN on one rank stops them all with the same sentence.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from utils.data.border_weights import dequantized
from utils.data.datasets import UnetDataset
from utils.device import Runtime, prefers_channels_last
from utils.distributed import (
    SINGLE_PROCESS,
    DistInfo,
    all_gather_rows,
    all_reduce_,
    all_reduce_sum,
)
from utils.errors import UserError
from utils.inference.pipeline import InferencePipeline, default_batching
from utils.progress import progress
from utils.utils_metrics import ConfusionMatrix, f_score

#: With one process the host reads the running loss at most this often (seconds), to show it
#: and check it.
REFRESH_SECONDS = 0.5
#: Under torchrun every rank reads it after every this many steps, so the ranks agree.
SYNC_STEPS = 10


class DivergedError(UserError):
    """The loss became NaN or Inf."""


class RunningMeans:
    """Sums of the loss and f-score over steps, kept on the device, and the first step (and its
    loss) that was not finite. :meth:`read` is the one place that waits for the device."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)
        self.first_bad = torch.zeros(2, dtype=torch.float64, device=device)
        self.steps = 0
        # the step number on the device too: copying a host number in would wait for the GPU
        self._step = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, score: torch.Tensor) -> None:
        values = torch.stack([loss.detach(), score.detach()]).double()
        self.sums += values
        self.steps += 1
        self._step += 1
        newly_bad = ~torch.isfinite(values[0]) & (self.first_bad[0] == 0)
        noted = torch.stack([self._step, values[0]])
        self.first_bad = torch.where(newly_bad, noted, self.first_bad)

    def read(self, dist_info: DistInfo = SINGLE_PROCESS) -> tuple[float, float, int, float, int]:
        """Mean loss, mean f-score, and the first non-finite step (0: none), its loss and rank.

        Under torchrun a collective: every rank must call it at the same step, and all get the
        same first bad step, the earliest over the ranks (the lowest rank on a tie).
        """
        noted = self.first_bad
        rows = all_gather_rows(noted) if dist_info.enabled else noted[None]
        loss, score = self.sums.tolist()
        bad = [(int(step), rank, value) for rank, (step, value) in enumerate(rows.tolist()) if step]
        bad_step, rank, bad_loss = min(bad) if bad else (0, 0, 0.0)
        steps = max(self.steps, 1)
        return loss / steps, score / steps, bad_step, bad_loss, rank


def check_finite(
    means: RunningMeans, epoch: int, dist_info: DistInfo = SINGLE_PROCESS
) -> tuple[float, float]:
    """The mean loss and f-score, or a :class:`DivergedError` naming the first bad step (and,
    under torchrun, its rank), the same on every rank."""
    loss, score, bad_step, bad_loss, rank = means.read(dist_info)
    if bad_step:
        where = f" on rank {rank}" if dist_info.world_size > 1 else ""
        raise DivergedError(
            f"the loss became {bad_loss} at epoch {epoch + 1}, step {bad_step}{where}; the last "
            "good weights and checkpoint_last.pth are kept. Lower --init-lr, try --precision "
            "fp32, or check the labels for values the classes do not cover."
        )
    return loss, score


def get_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    criterion: nn.Module,
    runtime: Runtime,
    steps: int,
    epoch: int = 0,
    total_epochs: int = 1,
    dist_info: DistInfo = SINGLE_PROCESS,
) -> tuple[float, float]:
    """Train ``steps`` batches of ``loader``; return the mean loss and f-score over all ranks."""
    model.train()
    means = RunningMeans(runtime.device)
    desc = f"Epoch {epoch + 1}/{total_epochs}"
    bar = progress(total=steps, desc=desc, disable=not dist_info.is_main)
    last_read = time.monotonic()
    # zip stops before fetching a batch too many
    for step, (images, labels, *maps) in zip(range(1, steps + 1), loader, strict=False):
        images = runtime.model_input(images)
        labels = runtime.labels(labels)
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            outputs = model(images)
        loss = criterion(outputs, labels, pixel_weights=border_weights(maps, runtime))
        with torch.no_grad():
            score = f_score(outputs, labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        means.add(loss, score)
        bar.update()
        if dist_info.enabled:
            due = step % SYNC_STEPS == 0
        else:
            due = time.monotonic() - last_read >= REFRESH_SECONDS
        if due and step < steps:
            _show(bar, check_finite(means, epoch, dist_info), optimizer, refresh=False)
            last_read = time.monotonic()
    _show(bar, check_finite(means, epoch, dist_info), optimizer, refresh=True)
    bar.close()
    return _mean_over_ranks(means, runtime.device)


def border_weights(maps: list[torch.Tensor], runtime: Runtime) -> torch.Tensor | None:
    """A batch's uint8 border maps (a loss that weighs pixels asked for them) as float weights
    on the device; None without."""
    return dequantized(maps[0].to(runtime.device, non_blocking=True)) if maps else None


def _show(bar, means: tuple[float, float], optimizer, refresh: bool) -> None:
    loss, score = means
    lr = get_lr(optimizer)
    bar.set_postfix(
        total_loss=f"{loss:.4f}", f_score=f"{score:.4f}", lr=f"{lr:.2e}", refresh=refresh
    )


def _mean_over_ranks(means: RunningMeans, device: torch.device) -> tuple[float, float]:
    sums = all_reduce_sum([*means.sums.tolist(), means.steps], device)
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    loader: Iterable,
    *,
    criterion: nn.Module,
    runtime: Runtime,
    steps: int,
    dist_info: DistInfo = SINGLE_PROCESS,
) -> tuple[float, float]:
    """Mean validation loss and f-score over ``steps`` batches on every rank (read once)."""
    model.eval()
    means = RunningMeans(runtime.device)
    bar = progress(total=steps, desc="Validation", disable=not dist_info.is_main)
    for _, (images, labels, *maps) in zip(range(steps), loader, strict=False):
        images = runtime.model_input(images)
        labels = runtime.labels(labels)
        with runtime.autocast():
            outputs = model(images)
        loss = criterion(outputs, labels, pixel_weights=border_weights(maps, runtime))
        means.add(loss, f_score(outputs, labels))
        bar.update()
    bar.set_postfix(val_loss=f"{means.read()[0]:.4f}")  # this rank's share
    bar.close()
    return _mean_over_ranks(means, runtime.device)


@torch.no_grad()
def evaluate_miou(
    model: nn.Module,
    dataset: UnetDataset,
    runtime: Runtime,
    dist_info: DistInfo = SINGLE_PROCESS,
    batch_size: int | None = None,
    num_workers: int | None = None,
    tile: int | None = None,
    stride: int | None = None,
    samples: dict[int, np.ndarray | None] | None = None,
) -> ConfusionMatrix:
    """The get_miou.py evaluation of ``dataset`` (at original size), summed over all ranks.

    The images go through get_miou.py's pipeline with its defaults for the device (memory
    layout, batch size, workers) and the same ``tile``/``stride`` windows, so the figure is the
    one get_miou.py reports for the same weights. When training runs in the other memory
    layout, a copy of the model in get_miou.py's layout predicts: its weights are converted
    once per evaluation, not on every forward pass. Each rank predicts every
    ``world_size``-th image; the confusion matrix stays on the device until the end.
    ``samples``: this rank's dataset indices whose class maps to copy to the host, filled in.
    """
    batch_size, num_workers = default_batching(runtime.device, batch_size, num_workers)
    model.eval()
    channels_last = prefers_channels_last(runtime.device)
    if channels_last != runtime.channels_last:  # one layout for the weights and the inputs
        runtime = dataclasses.replace(runtime, channels_last=channels_last)
        with torch.no_grad():
            model = copy.deepcopy(model).to(memory_format=runtime.memory_format)
    pipeline = InferencePipeline(model, dataset.input_shape, runtime, tile=tile, stride=stride)
    matrix = ConfusionMatrix(dataset.num_classes, runtime.device)
    indices = range(dist_info.rank, len(dataset), dist_info.world_size)
    predictions = pipeline.predict(
        indices, dataset.read_pair, batch_size=batch_size, num_workers=num_workers, to_host=False
    )
    for sample, pred in progress(
        predictions, total=len(indices), desc="Get miou", disable=not dist_info.is_main
    ):
        matrix.update(torch.from_numpy(sample.extra).to(runtime.device, non_blocking=True), pred)
        if samples is not None and indices[sample.index] in samples:
            samples[indices[sample.index]] = pred.cpu().numpy()
    all_reduce_(matrix.counts)
    return matrix
