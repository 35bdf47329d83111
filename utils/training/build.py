"""What a training run is built from: its data sets, its model and its loss, each from its
section of the settings."""

from __future__ import annotations

from collections.abc import Callable

import torch

from nets.losses import SegmentationLoss
from nets.unet import Unet
from nets.unet_training import weights_init
from utils.data.datasets import UnetDataset, read_split, split_path
from utils.device import Runtime
from utils.settings.config import DataSettings, TrainConfig
from utils.training.checkpoint import load_matching_weights

Say = Callable[..., None]


def build_data(
    data: DataSettings, seed: int, say: Say = print, border_weights: bool = False
) -> tuple[UnetDataset, UnetDataset | None]:
    """The train and val datasets (with each label's weight map for a ``border_ce`` loss);
    without a val split (the default one missing or empty, as voc_annotation.py
    --train-percent 1 writes it), training goes on without."""
    common = dict(
        num_classes=data.num_classes,
        dataset_path=data.dataset_path,
        dataset_format=data.dataset_format,
        seed=seed,
        border_weights=border_weights,
    )
    train = UnetDataset(
        read_split(data.dataset_path, data.train_split, data.dataset_format),
        input_shape=data.train_crop or data.input_shape,
        train=True,
        augment=data.augment,
        crop=bool(data.train_crop),
        **common,
    )
    if not data.val_split:
        say(
            "No validation (--val-split ''): no val loss or mIoU while training, and "
            "best_epoch_weights.pth follows the train loss; get_miou.py scores the weights after."
        )
        return train, None
    val_path = split_path(data.dataset_path, data.val_split, data.dataset_format)
    if data.val_split == "val" and (not val_path.is_file() or not val_path.read_text().split()):
        state = "is empty" if val_path.is_file() else "does not exist"
        say(
            f"No val split ('{val_path}' {state}): training without validation, so no val loss "
            "or mIoU, and best_epoch_weights.pth follows the train loss."
        )
        return train, None
    lines = read_split(data.dataset_path, data.val_split, data.dataset_format)
    return train, UnetDataset(lines, input_shape=data.input_shape, train=False, **common)


def build_model(data: DataSettings, runtime: Runtime, say: Say = print) -> Unet:
    """The UNet: ImageNet encoder or ``init_type`` weights, then ``model_path``'s matching
    tensors, on the runtime's device and layout."""
    model = Unet(
        num_classes=data.num_classes,
        pretrained=data.pretrained,
        backbone=data.backbone,
        width_mult=data.width_mult,
    )
    if not data.pretrained:
        weights_init(model, init_type=data.init_type)
    if data.model_path:
        report = load_matching_weights(model, data.model_path, data.allow_backbone_mismatch)
        say(f"Weights from {data.model_path}:")
        say("\n".join(report.lines()))
        if report.mismatched and all(k.startswith("final.") for k in report.mismatched):
            say("  (the head follows --num-classes, so it starts fresh: that is expected)")
    return runtime.prepare(model)


def build_criterion(config: TrainConfig, device: torch.device) -> SegmentationLoss:
    loss = config.loss
    criterion = SegmentationLoss(config.data.num_classes, loss.cls_weights, terms=loss.terms)
    return criterion.to(device)
