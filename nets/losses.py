"""The losses, numerically as in the reference, and :data:`LOSSES`, the table of loss terms.

``CE_Loss``, ``Focal_Loss`` and ``Dice_loss`` keep the reference's names and signatures (its
users import them from ``nets.unet_training``, which hands them on). Training sums terms of
:data:`LOSSES` by name: ``ce`` or ``focal``, plus ``dice``, as the original's ``focal_loss`` and
``dice_loss`` switches choose them, or whatever ``--loss`` names. A new loss is one function
decorated with :func:`loss_term`.

Nothing here reads a value back to the host, so a training step never waits on the GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nets.errors import UserError
from nets.functional import dice_score, resize_to, target_size


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


#: ``term(logits, labels, cls_weights, num_classes)``: a scalar loss; label ``num_classes`` is
#: ignored. A term registered with ``weighs_pixels=True`` also takes ``pixel_weights``, an
#: (N, H, W) float weight per label pixel that the data set computes (see
#: :mod:`utils.data.border_weights`).
Term = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class LossTerm:
    name: str
    help: str
    compute: Term
    weighs_pixels: bool = False


LOSSES: dict[str, LossTerm] = {}


def loss_term(name: str, help: str, weighs_pixels: bool = False) -> Callable[[Term], Term]:
    """Register the decorated function in :data:`LOSSES` as ``name``."""

    def register(compute: Term) -> Term:
        LOSSES[name] = LossTerm(name, help, compute, weighs_pixels)
        return compute

    return register


def needs_pixel_weights(terms: Sequence[str]) -> bool:
    """Whether any of ``terms`` weighs each pixel (the data set must then compute weights)."""
    return any(LOSSES[name].weighs_pixels for name in terms if name in LOSSES)


@loss_term("ce", "class-weighted cross entropy (the original's default)")
def _ce(outputs, labels, cls_weights, num_classes):
    return CE_Loss(outputs, labels, cls_weights, num_classes=num_classes)


@loss_term("focal", "Focal loss, against unbalanced classes (the original's focal_loss)")
def _focal(outputs, labels, cls_weights, num_classes):
    return Focal_Loss(outputs, labels, cls_weights, num_classes=num_classes)


@loss_term("dice", "1 - the Dice score of the softmax (the original's dice_loss)")
def _dice(outputs, labels, cls_weights, num_classes):
    return Dice_loss(outputs, labels)


@loss_term(
    "border_ce",
    "the U-Net paper's cross entropy weighted towards the borders between touching objects "
    "(w0 = 10, sigma = 5 px; two classes)",
    weighs_pixels=True,
)
def pixel_weighted_cross_entropy(
    inputs: torch.Tensor,
    target: torch.Tensor,
    cls_weights: torch.Tensor | None,
    num_classes: int,
    pixel_weights: torch.Tensor,
) -> torch.Tensor:
    """Cross entropy weighted per pixel (times the class weights), as a weighted mean: the sum
    of weighted losses over the sum of the weights of the pixels not ignored."""
    inputs = resize_to(inputs, *target_size(target)).float()
    weight = _as_weight(cls_weights, inputs)
    nll = cross_entropy(inputs, target, weight, num_classes, reduction="none")
    valid = (target != num_classes).float()
    class_weight = valid if weight is None else weight[target.clamp(max=num_classes - 1)] * valid
    return (nll * pixel_weights).sum() / (class_weight * pixel_weights).sum().clamp(min=1e-12)


def original_terms(dice: bool = False, focal: bool = False) -> list[str]:
    """The terms the original's switches choose: Focal or CE, plus Dice."""
    return ["focal" if focal else "ce"] + (["dice"] if dice else [])


def check_terms(terms: Sequence[str]) -> None:
    """A :class:`UserError` naming the choices when a term is not in :data:`LOSSES`."""
    unknown = [name for name in terms if name not in LOSSES]
    if unknown or not terms:
        what = f"unknown loss term {unknown[0]!r}" if unknown else "no loss term given"
        raise UserError(f"{what}; use one or more of {', '.join(LOSSES)}.")


class SegmentationLoss(nn.Module):
    """The training loss: the sum of ``terms`` of :data:`LOSSES`, in order; by default the
    original's Focal (``focal``) or class-weighted CE, plus Dice (``dice``). Label
    ``num_classes`` is ignored, as the reference's border value 255 becomes.
    """

    def __init__(
        self,
        num_classes: int,
        cls_weights: Sequence[float] | None = None,
        dice: bool = False,
        focal: bool = False,
        terms: Sequence[str] | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.terms = list(terms) if terms is not None else original_terms(dice, focal)
        check_terms(self.terms)
        weights = torch.ones(num_classes) if cls_weights is None else torch.tensor(cls_weights)
        self.register_buffer("cls_weights", weights.float())

    def forward(
        self,
        outputs: torch.Tensor,
        labels: torch.Tensor,
        pixel_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        loss = None
        for name in self.terms:
            term = LOSSES[name]
            args = (outputs, labels, self.cls_weights, self.num_classes)
            if term.weighs_pixels:
                if pixel_weights is None:
                    raise ValueError(f"the loss term {name!r} needs the batch's pixel weights")
                value = term.compute(*args, pixel_weights=pixel_weights)
            else:
                value = term.compute(*args)
            loss = value if loss is None else loss + value
        return loss
