"""The original's ``nets/unet_training.py``: its names, kept for its users' scripts.

``weights_init`` lives here; ``CE_Loss``, ``Focal_Loss``, ``Dice_loss`` and the training loss
:class:`SegmentationLoss` live in :mod:`nets.losses`, and ``get_lr_scheduler`` and
``set_optimizer_lr`` in ``utils.training.lr_schedule``; all are handed on from here, numerically the
reference's.
"""

from __future__ import annotations

from torch import nn

from nets.errors import UserError
from nets.losses import (
    CE_Loss,
    Dice_loss,
    Focal_Loss,
    SegmentationLoss,
    cross_entropy,
    gathered_cross_entropy,
    one_hot_target,
)
from utils.training.lr_schedule import get_lr_scheduler, set_optimizer_lr  # the original's names

__all__ = [
    "CE_Loss", "Dice_loss", "Focal_Loss", "SegmentationLoss", "cross_entropy",
    "gathered_cross_entropy", "get_lr_scheduler", "one_hot_target", "set_optimizer_lr",
    "weights_init",
]  # fmt: skip

INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")


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
