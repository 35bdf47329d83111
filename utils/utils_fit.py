"""The training engine: one training step, one evaluation, for every precision and for DDP."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from nets.unet_training import CE_Loss, Dice_loss, Focal_Loss
from utils.dataloader import UnetDataset
from utils.device import Runtime, prefers_channels_last
from utils.distributed import SINGLE_PROCESS, DistInfo, all_reduce_, all_reduce_sum
from utils.errors import UserError
from utils.inference import InferencePipeline, default_batching
from utils.utils_metrics import ConfusionMatrix, f_score


@dataclass
class LossConfig:
    """Which loss to train: Focal or CE, plus Dice; class weights; the ignore index."""

    num_classes: int
    cls_weights: torch.Tensor
    dice_loss: bool = False
    focal_loss: bool = False

    def __call__(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        main = Focal_Loss if self.focal_loss else CE_Loss
        loss = main(outputs, labels, self.cls_weights, num_classes=self.num_classes)
        if self.dice_loss:
            loss = loss + Dice_loss(outputs, labels)
        return loss


class DivergedError(UserError):
    """The loss became NaN or Inf."""


def get_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loader: Iterable,
    steps: int,
    criterion: LossConfig,
    runtime: Runtime,
    epoch: int,
    total_epochs: int,
    dist_info: DistInfo = SINGLE_PROCESS,
) -> tuple[float, float]:
    """Train ``steps`` batches; return the mean loss and f-score over all ranks."""
    model.train()
    total_loss = total_f_score = 0.0
    bar = tqdm(
        total=steps,
        desc=f"Epoch {epoch + 1}/{total_epochs}",
        mininterval=0.3,
        disable=not dist_info.is_main,
    )
    # zip stops before fetching a batch too many
    for step, (images, labels) in zip(range(steps), loader, strict=False):
        images = runtime.model_input(images)
        labels = labels.to(runtime.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            outputs = model(images)
        loss = criterion(outputs, labels)
        with torch.no_grad():
            score = f_score(outputs, labels)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise DivergedError(
                f"the loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; the last "
                "good weights and checkpoint_last.pth are kept. Lower --init-lr, try "
                "--precision fp32, or check the labels for values the classes do not cover."
            )
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss_value
        total_f_score += score.item()
        bar.set_postfix(
            total_loss=f"{total_loss / (step + 1):.4f}",
            f_score=f"{total_f_score / (step + 1):.4f}",
            lr=f"{get_lr(optimizer):.2e}",
        )
        bar.update()
    bar.close()
    sums = all_reduce_sum([total_loss, total_f_score, steps], runtime.device)
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    loader: Iterable,
    steps: int,
    criterion: LossConfig,
    runtime: Runtime,
    dist_info: DistInfo = SINGLE_PROCESS,
) -> tuple[float, float]:
    """Mean validation loss and f-score over ``steps`` batches on every rank."""
    model.eval()
    total_loss = total_f_score = 0.0
    bar = tqdm(total=steps, desc="Validation", mininterval=0.3, disable=not dist_info.is_main)
    for step, (images, labels) in zip(range(steps), loader, strict=False):
        images = runtime.model_input(images)
        labels = labels.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            outputs = model(images)
        total_loss += criterion(outputs, labels).item()
        total_f_score += f_score(outputs, labels).item()
        bar.set_postfix(val_loss=f"{total_loss / (step + 1):.4f}")
        bar.update()
    bar.close()
    sums = all_reduce_sum([total_loss, total_f_score, steps], runtime.device)
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


@torch.no_grad()
def evaluate_miou(
    model: nn.Module,
    dataset: UnetDataset,
    runtime: Runtime,
    dist_info: DistInfo = SINGLE_PROCESS,
    batch_size: int | None = None,
    num_workers: int | None = None,
) -> ConfusionMatrix:
    """The get_miou.py evaluation of ``dataset`` (at original size), summed over all ranks.

    The images go through get_miou.py's pipeline with its defaults for the device (memory
    layout, batch size, workers), so the figure is the one get_miou.py reports for the same
    weights. Each rank predicts every ``world_size``-th image; the confusion matrix stays on
    the device until the end.
    """
    batch_size, num_workers = default_batching(runtime.device, batch_size, num_workers)
    model.eval()
    channels_last = prefers_channels_last(runtime.device)
    pipeline = InferencePipeline(
        model, dataset.input_shape, dataclasses.replace(runtime, channels_last=channels_last)
    )
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
