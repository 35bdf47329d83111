"""The training engine: one training epoch, one evaluation, for every precision and for DDP.

A step never waits on the GPU: the loss and f-score are summed on the device, and the host
reads them (one transfer) only when the progress bar refreshes, at most every
:data:`REFRESH_SECONDS`, and at the end of the epoch. The NaN/Inf check happens at those reads,
from the first bad step the device has noted, so it still names the exact step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

import torch
from torch import nn
from tqdm import tqdm

from utils.dataloader import UnetDataset
from utils.device import Runtime, prefers_channels_last
from utils.distributed import SINGLE_PROCESS, DistInfo, all_reduce_, all_reduce_sum
from utils.errors import UserError
from utils.inference import InferencePipeline, default_batching
from utils.utils_metrics import ConfusionMatrix, f_score

#: The host reads the running loss at most this often (seconds), to show it and check it.
REFRESH_SECONDS = 0.5


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

    def read(self) -> tuple[float, float, int, float]:
        """Mean loss, mean f-score, the first non-finite step (0: none) and its loss."""
        loss, score, bad_step, bad_loss = torch.cat([self.sums, self.first_bad]).tolist()
        steps = max(self.steps, 1)
        return loss / steps, score / steps, int(bad_step), bad_loss


def check_finite(means: RunningMeans, epoch: int) -> tuple[float, float]:
    """The mean loss and f-score, or a :class:`DivergedError` naming the first bad step."""
    loss, score, bad_step, bad_loss = means.read()
    if bad_step:
        raise DivergedError(
            f"the loss became {bad_loss} at epoch {epoch + 1}, step {bad_step}; the last good "
            "weights and checkpoint_last.pth are kept. Lower --init-lr, try --precision fp32, "
            "or check the labels for values the classes do not cover."
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
    bar = tqdm(total=steps, desc=f"Epoch {epoch + 1}/{total_epochs}", mininterval=0.3,
               disable=not dist_info.is_main)  # fmt: skip
    last_read = time.monotonic()
    # zip stops before fetching a batch too many
    for _, (images, labels) in zip(range(steps), loader, strict=False):
        images = runtime.model_input(images)
        labels = labels.to(runtime.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            outputs = model(images)
        loss = criterion(outputs, labels)
        with torch.no_grad():
            score = f_score(outputs, labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        means.add(loss, score)
        bar.update()
        if time.monotonic() - last_read >= REFRESH_SECONDS:
            loss_mean, score_mean = check_finite(means, epoch)
            bar.set_postfix(total_loss=f"{loss_mean:.4f}", f_score=f"{score_mean:.4f}",
                            lr=f"{get_lr(optimizer):.2e}", refresh=False)  # fmt: skip
            last_read = time.monotonic()
    loss_mean, score_mean = check_finite(means, epoch)
    bar.set_postfix(total_loss=f"{loss_mean:.4f}", f_score=f"{score_mean:.4f}",
                    lr=f"{get_lr(optimizer):.2e}")  # fmt: skip
    bar.close()
    return _mean_over_ranks(means, runtime.device)


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
    bar = tqdm(total=steps, desc="Validation", mininterval=0.3, disable=not dist_info.is_main)
    for _, (images, labels) in zip(range(steps), loader, strict=False):
        images = runtime.model_input(images)
        labels = labels.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            outputs = model(images)
        means.add(criterion(outputs, labels), f_score(outputs, labels))
        bar.update()
    bar.set_postfix(val_loss=f"{means.read()[0]:.4f}")
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
) -> ConfusionMatrix:
    """The get_miou.py evaluation of ``dataset`` (at original size), summed over all ranks.

    The images go through get_miou.py's pipeline with its defaults for the device (memory
    layout, batch size, workers) and the same ``tile``/``stride`` windows, so the figure is the
    one get_miou.py reports for the same weights. Each rank predicts every ``world_size``-th
    image; the confusion matrix stays on the device until the end.
    """
    batch_size, num_workers = default_batching(runtime.device, batch_size, num_workers)
    model.eval()
    channels_last = prefers_channels_last(runtime.device)
    runtime = dataclasses.replace(runtime, channels_last=channels_last)
    pipeline = InferencePipeline(model, dataset.input_shape, runtime, tile=tile, stride=stride)
    matrix = ConfusionMatrix(dataset.num_classes, runtime.device)
    indices = range(dist_info.rank, len(dataset), dist_info.world_size)
    predictions = pipeline.predict(
        indices, dataset.read_pair, batch_size=batch_size, num_workers=num_workers, to_host=False
    )
    for sample, pred in tqdm(predictions, total=len(indices), desc="Get miou", mininterval=0.3,
                             disable=not dist_info.is_main):  # fmt: skip
        matrix.update(torch.from_numpy(sample.extra).to(runtime.device, non_blocking=True), pred)
    all_reduce_(matrix.counts)
    return matrix
