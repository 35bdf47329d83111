"""The original's learning-rate rules: the batch-size fit, and the per-epoch schedules (quadratic
warm-up then cosine, or a staircase), with the public names its users import."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch

from utils.errors import UserError

LR_DECAY_TYPES = ("cos", "step")
#: The reference's nominal batch size for the batch-size-adaptive learning rate.
NBS = 16
#: (lowest, highest) initial LR after adapting to the batch size, per optimizer.
LR_LIMITS = {"adam": (1e-4, 1e-4), "sgd": (5e-4, 1e-1)}


def _warm_cos_lr(lr, min_lr, total_iters, warmup_total_iters, warmup_lr_start, no_aug_iter, iters):
    if iters <= warmup_total_iters:
        return (lr - warmup_lr_start) * pow(iters / float(warmup_total_iters), 2) + warmup_lr_start
    if iters >= total_iters - no_aug_iter:
        return min_lr
    progress = (iters - warmup_total_iters) / (total_iters - warmup_total_iters - no_aug_iter)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def _step_lr(lr, decay_rate, step_size, iters):
    return lr * decay_rate ** (iters // step_size)


def get_lr_scheduler(
    lr_decay_type: str,
    lr: float,
    min_lr: float,
    total_iters: int,
    warmup_iters_ratio: float = 0.05,
    warmup_lr_ratio: float = 0.1,
    no_aug_iter_ratio: float = 0.05,
    step_num: int = 10,
) -> Callable[[int], float]:
    """Return ``epoch -> lr``: quadratic warm-up then cosine ("cos"), or a staircase ("step")."""
    if lr_decay_type == "cos":
        warmup_total_iters = min(max(warmup_iters_ratio * total_iters, 1), 3)
        warmup_lr_start = max(warmup_lr_ratio * lr, 1e-6)
        no_aug_iter = min(max(no_aug_iter_ratio * total_iters, 1), 15)
        return partial(
            _warm_cos_lr, lr, min_lr, total_iters, warmup_total_iters, warmup_lr_start, no_aug_iter
        )
    if lr_decay_type == "step":
        decay_rate = (min_lr / lr) ** (1 / (step_num - 1))
        step_size = total_iters / step_num
        if step_size < 1:
            raise UserError(
                f"the step schedule needs at least {step_num} epochs, got {total_iters}; "
                "train longer or use --lr-decay-type cos."
            )
        return partial(_step_lr, lr, decay_rate, step_size)
    raise UserError(
        f"unknown lr decay type {lr_decay_type!r}; use one of {', '.join(LR_DECAY_TYPES)}."
    )


def set_optimizer_lr(
    optimizer: torch.optim.Optimizer, lr_scheduler_func: Callable[[int], float], epoch: int
) -> float:
    """Set the scheduled LR for ``epoch`` on every parameter group and return it."""
    lr = lr_scheduler_func(epoch)
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    return lr


def fit_lr(
    init_lr: float,
    min_lr: float,
    batch_size: int,
    optimizer_type: str = "adam",
    lr_fit: bool = True,
) -> tuple[float, float]:
    """The reference's batch-size-adaptive LR: scale by batch/16, then clamp to the optimizer's
    limits (Adam: exactly 1e-4). ``lr_fit=False`` returns the LRs as given."""
    if not lr_fit:
        return init_lr, min_lr
    low, high = LR_LIMITS[optimizer_type]
    fitted_init = min(max(batch_size / NBS * init_lr, low), high)
    fitted_min = min(max(batch_size / NBS * min_lr, low * 1e-2), high * 1e-2)
    return fitted_init, fitted_min


def describe_lr(
    init_lr: float,
    min_lr: float,
    batch_size: int,
    optimizer_type: str = "adam",
    lr_fit: bool = True,
    phase: str = "Unfreeze",
) -> tuple[str, str | None]:
    """A phase's batch and LR range, and a warning when the reference's clamp changed the LR."""
    fitted_init, fitted_min = fit_lr(init_lr, min_lr, batch_size, optimizer_type, lr_fit)
    text = f"{phase} phase: batch {batch_size}, LR {fitted_init:.3g} -> {fitted_min:.3g}"
    asked = batch_size / NBS * init_lr
    if not lr_fit or math.isclose(asked, fitted_init, rel_tol=1e-5, abs_tol=1e-8):
        return text, None
    low, high = LR_LIMITS[optimizer_type]
    return text, (
        f"warning: --init-lr {init_lr:g} x batch {batch_size}/{NBS} = {asked:.3g} was clamped "
        f"to {fitted_init:.3g}: {optimizer_type} keeps the LR in [{low:g}, {high:g}] as the "
        "reference does; --no-lr-fit uses --init-lr and --min-lr as given"
    )
