"""Losses, weight init and learning-rate rules, numerically as in the reference.

The public names and signatures (``CE_Loss``, ``Focal_Loss``, ``Dice_loss``, ``weights_init``,
``get_lr_scheduler``, ``set_optimizer_lr``) are the reference's, kept for its users' scripts.
:class:`SegmentationLoss` is the module that training uses: Focal or CE, plus Dice.

Nothing here reads a value back to the host, so a training step never waits on the GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from nets.interpolate import resize_bilinear
from utils.errors import UserError

INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")
LR_DECAY_TYPES = ("cos", "step")
#: The reference's nominal batch size for the batch-size-adaptive learning rate.
NBS = 16
#: (lowest, highest) initial LR after adapting to the batch size, per optimizer.
LR_LIMITS = {"adam": (1e-4, 1e-4), "sgd": (5e-4, 1e-1)}


def resize_to(inputs: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinearly resize logits to the target size when either side differs.

    The reference resized only when both sides differed, and crashed otherwise.
    """
    if tuple(inputs.shape[-2:]) != (height, width):
        inputs = resize_bilinear(inputs, (height, width), align_corners=True)
    return inputs


def _as_weight(cls_weights, like: torch.Tensor) -> torch.Tensor | None:
    if cls_weights is None:
        return None
    return torch.as_tensor(cls_weights, dtype=torch.float32, device=like.device)


def cross_entropy(
    inputs: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str = "mean",
) -> torch.Tensor:
    """``F.cross_entropy``, or under deterministic algorithms on CUDA, where its NLL kernel is
    refused, :func:`gathered_cross_entropy`."""
    if inputs.is_cuda and torch.are_deterministic_algorithms_enabled():
        return gathered_cross_entropy(inputs, target, weight, ignore_index, reduction)
    return F.cross_entropy(
        inputs, target, weight=weight, ignore_index=ignore_index, reduction=reduction
    )


def gathered_cross_entropy(
    inputs: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str = "mean",
) -> torch.Tensor:
    """Weighted cross entropy as log-softmax, gather and a weighted mean: ops with
    deterministic CUDA kernels, the same value as ``F.cross_entropy`` up to rounding."""
    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    nll = -F.log_softmax(inputs, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    w = valid.to(nll.dtype) if weight is None else weight[safe] * valid
    if reduction == "none":
        return nll * w
    return (nll * w).sum() / w.sum()


def CE_Loss(inputs: torch.Tensor, target: torch.Tensor, cls_weights, num_classes: int = 21):
    """Class-weighted cross entropy over pixels; label ``num_classes`` is ignored."""
    inputs = resize_to(inputs, *target.shape[-2:]).float()
    return cross_entropy(inputs, target, _as_weight(cls_weights, inputs), num_classes)


def Focal_Loss(
    inputs: torch.Tensor,
    target: torch.Tensor,
    cls_weights,
    num_classes: int = 21,
    alpha: float | None = 0.5,
    gamma: float = 2,
):
    """Focal loss ``-(1 - pt)^gamma * alpha * log(pt)``, averaged over all pixels.

    As in the reference, ignored pixels count in the mean with a loss of zero, and ``pt`` is
    taken from the class-weighted cross entropy.
    """
    inputs = resize_to(inputs, *target.shape[-2:]).float()
    logpt = -cross_entropy(
        inputs, target, _as_weight(cls_weights, inputs), num_classes, reduction="none"
    )
    pt = torch.exp(logpt)
    if alpha is not None:
        logpt = logpt * alpha
    return (-((1 - pt) ** gamma) * logpt).mean()


def one_hot_target(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) class indices -> (N, H, W, num_classes + 1) float one-hot, ignore channel last.

    Built on the labels' device, where the loss needs it, instead of per sample in the
    data-loader workers as the reference did.
    """
    return F.one_hot(labels, num_classes + 1).float()


#: Up to this many bins, CUDA sums per class by comparing and reducing once per class: real
#: labels are mostly background, and a scatter's atomic adds into that one address serialise on
#: a GPU. The CPU scatters in one sequential pass, many times faster there than a pass per
#: class (``python -m benchmarks.counting`` times both, on uniform and on skewed labels).
COMPARE_MAX_BINS = 32


def class_sums(
    labels: torch.Tensor, bins: int, values: torch.Tensor | None = None, compare: bool | None = None
) -> torch.Tensor:
    """Per-bin sums of ``values`` (None: int64 counts) over flat ``labels`` in ``[0, bins)``.

    ``compare`` (None: on CUDA with at most :data:`COMPARE_MAX_BINS` bins) sums each bin's mask;
    otherwise a scatter (not ``bincount``, which reads its size back to the host). Counts are the
    same integers either way; float sums differ only by the order of their rounding.
    """
    if compare is None:
        compare = labels.is_cuda and bins <= COMPARE_MAX_BINS
    if compare:
        masks = (labels == c for c in range(bins))
        if values is None:
            return torch.stack([mask.sum() for mask in masks])
        return torch.stack([torch.where(mask, values, 0).sum() for mask in masks])
    if values is None:
        counts = torch.zeros(bins, dtype=torch.int64, device=labels.device)
        return counts.scatter_add_(0, labels, torch.ones_like(labels))
    return torch.zeros(bins, dtype=values.dtype, device=values.device).index_add(0, labels, values)


def dice_score(
    probs: torch.Tensor, target: torch.Tensor, beta: float = 1, smooth: float = 1e-5
) -> torch.Tensor:
    """Mean over classes of the F-beta score between (N, C, H, W) ``probs`` and the target.

    ``target`` is the reference's (N, H, W, C + 1) one-hot, whose last (ignore) channel is
    dropped, or (N, H, W) class indices with ``C`` = ignore, which gives the same score without
    building the one-hot. Predicted mass on ignored pixels counts as false positive, as in the
    reference.
    """
    num_classes = probs.shape[1]
    if target.dim() == 3:
        labels = target.clamp(max=num_classes - 1).unsqueeze(1)
        picked = probs.gather(1, labels).squeeze(1) * (target < num_classes)
        tp = class_sums(labels.reshape(-1), num_classes, picked.reshape(-1))
        counts = class_sums(target.reshape(-1), num_classes + 1)
        fn = counts[:num_classes].to(probs.dtype) - tp
    else:
        one_hot = target[..., :-1].permute(0, 3, 1, 2)
        tp = torch.sum(one_hot * probs, dim=(0, 2, 3))
        fn = torch.sum(one_hot, dim=(0, 2, 3)) - tp
    fp = torch.sum(probs, dim=(0, 2, 3)) - tp
    beta2 = beta**2
    score = ((1 + beta2) * tp + smooth) / ((1 + beta2) * tp + beta2 * fn + fp + smooth)
    return torch.mean(score)


def target_size(target: torch.Tensor) -> tuple[int, int]:
    """(H, W) of a class-index (N, H, W) or one-hot (N, H, W, C + 1) target."""
    return tuple(target.shape[1:3])


def Dice_loss(inputs: torch.Tensor, target: torch.Tensor, beta: float = 1, smooth: float = 1e-5):
    """``1 - dice_score`` of the softmax; ``target`` is the one-hot or the class indices."""
    inputs = resize_to(inputs, *target_size(target)).float()
    return 1 - dice_score(torch.softmax(inputs, dim=1), target, beta, smooth)


class SegmentationLoss(nn.Module):
    """The training loss: Focal (``focal``) or class-weighted CE, plus Dice (``dice``).

    Label ``num_classes`` is ignored, as the reference's border value 255 becomes.
    """

    def __init__(
        self,
        num_classes: int,
        cls_weights: Sequence[float] | None = None,
        dice: bool = False,
        focal: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.dice = dice
        self.focal = focal
        weights = torch.ones(num_classes) if cls_weights is None else torch.tensor(cls_weights)
        self.register_buffer("cls_weights", weights.float())

    def forward(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        main = Focal_Loss if self.focal else CE_Loss
        loss = main(outputs, labels, self.cls_weights, num_classes=self.num_classes)
        if self.dice:
            loss = loss + Dice_loss(outputs, labels)
        return loss


def weights_init(net: nn.Module, init_type: str = "normal", init_gain: float = 0.02) -> None:
    """Re-initialise every conv weight (biases untouched) and BatchNorm2d, as the reference."""
    if init_type not in INIT_TYPES:
        raise UserError(f"unknown init type {init_type!r}; use one of {', '.join(INIT_TYPES)}.")

    def init_func(m: nn.Module) -> None:
        classname = m.__class__.__name__
        if hasattr(m, "weight") and "Conv" in classname:
            if init_type == "normal":
                nn.init.normal_(m.weight.data, 0.0, init_gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight.data, gain=init_gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(m.weight.data, gain=init_gain)
        elif "BatchNorm2d" in classname:
            nn.init.normal_(m.weight.data, 1.0, 0.02)
            nn.init.constant_(m.bias.data, 0.0)

    net.apply(init_func)


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
