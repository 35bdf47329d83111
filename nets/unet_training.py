"""Losses and weight init, numerically as in the reference.

The public names and signatures (``CE_Loss``, ``Focal_Loss``, ``Dice_loss``, ``weights_init``,
and ``get_lr_scheduler`` and ``set_optimizer_lr``, which live in ``utils.lr_schedule`` and are
re-exported here) are the reference's, kept for its users' scripts. :class:`SegmentationLoss`
is the module that training uses: Focal or CE, plus Dice.

Nothing here reads a value back to the host, so a training step never waits on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nets.errors import UserError
from nets.functional import dice_score, resize_to, target_size
from utils.lr_schedule import get_lr_scheduler, set_optimizer_lr  # the original's names

__all__ = [
    "CE_Loss", "Dice_loss", "Focal_Loss", "SegmentationLoss", "get_lr_scheduler",
    "set_optimizer_lr", "weights_init",
]  # fmt: skip

INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")


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
