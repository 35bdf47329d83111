"""The validation of a run's settings: each refusal one sentence naming the setting and its
flag, before anything is built."""

from __future__ import annotations

import math
from typing import Any

from nets.losses import needs_pixel_weights
from nets.unet import check_input_shape, check_tile, check_width_mult
from utils.errors import UserError
from utils.settings.config import (
    SETTINGS,
    ScheduleSettings,
    SettingInfo,
    TrainConfig,
    format_value,
)
from utils.training.lr_schedule import get_lr_scheduler


def validate(config: TrainConfig) -> None:
    """Refuse settings that cannot train, each in one sentence naming the setting and its
    flag. Nothing is rewritten: derived defaults (--min-lr, --cls-weights) are computed where
    they are used."""
    flat = config.flat()
    for name, value in flat.items():
        _check_one(SETTINGS[name], value)
    _check_schedule(config.schedule)
    _check_lengths(config)
    opt = config.optimizer
    if not 0 < opt.final_lr <= opt.init_lr:
        raise UserError(
            f"min_lr (--min-lr) {opt.final_lr:g} must be above 0 and at most init_lr "
            f"(--init-lr) {opt.init_lr:g}."
        )
    data, evaluation = config.data, config.evaluation
    check_input_shape(data.input_shape[0], data.input_shape[1], data.backbone)
    if data.train_crop:
        check_input_shape(data.train_crop[0], data.train_crop[1], data.backbone)
    check_tile(evaluation.tile, evaluation.stride, data.backbone)
    check_width_mult(data.width_mult, data.backbone, data.pretrained)
    _check_best_by(config)
    if needs_pixel_weights(config.loss.terms) and data.num_classes != 2:
        raise UserError(
            f"the border_ce loss weighs the borders between touching objects of a two-class "
            f"task (objects and background), but num_classes (--num-classes) is "
            f"{data.num_classes}; drop border_ce from --loss, or label two classes."
        )
    get_lr_scheduler(opt.lr_decay_type, opt.init_lr, opt.final_lr, config.schedule.unfreeze_epoch)


def _check_one(info: SettingInfo, value: Any) -> None:
    choices, values = info.options.get("choices"), value if isinstance(value, list) else [value]
    if choices and value is not None and any(item not in choices for item in values):
        raise UserError(
            f"{info.describe()} is {value!r}; use one of {', '.join(map(str, choices))}."
        )
    minimum, below = info.options.get("minimum"), info.options.get("below")
    for item in values:
        if isinstance(item, float) and not math.isfinite(item):
            raise UserError(f"{info.describe()} must be a finite number, not {item}.")
        if minimum is not None and item is not None and item < minimum:
            raise UserError(
                f"{info.describe()} must be at least {minimum}, not {format_value(item)}."
            )
        if below is not None and item is not None and item >= below:
            raise UserError(f"{info.describe()} must be below {below}, not {format_value(item)}.")


def _check_schedule(schedule: ScheduleSettings) -> None:
    if schedule.init_epoch >= schedule.unfreeze_epoch:
        raise UserError(
            f"init_epoch (--init-epoch) {schedule.init_epoch} leaves nothing to train before "
            f"unfreeze_epoch (--unfreeze-epoch) {schedule.unfreeze_epoch}, the total; raise "
            "--unfreeze-epoch."
        )
    if schedule.freeze_train and schedule.freeze_epoch > schedule.unfreeze_epoch:
        raise UserError(
            f"freeze_epoch (--freeze-epoch) {schedule.freeze_epoch} is past unfreeze_epoch "
            f"(--unfreeze-epoch) {schedule.unfreeze_epoch}, the total number of epochs; lower "
            "--freeze-epoch or pass --no-freeze-train."
        )


def _check_lengths(config: TrainConfig) -> None:
    classes = config.data.num_classes
    for info, values, what in (
        (SETTINGS["name_classes"], config.data.name_classes, "names"),
        (SETTINGS["cls_weights"], config.loss.cls_weights, "values"),
    ):
        if values is not None and len(values) != classes:
            raise UserError(
                f"{info.describe()} has {len(values)} {what} but num_classes (--num-classes) is "
                f"{classes}; give one per class."
            )


def _check_best_by(config: TrainConfig) -> None:
    evaluation = config.evaluation
    if evaluation.save_best_by != "miou":
        return
    if not evaluation.eval_flag:
        raise UserError(
            "save_best_by (--save-best-by) miou needs the in-training mIoU, which --no-eval-flag "
            "turns off; drop one of the two."
        )
    if evaluation.eval_period > config.schedule.unfreeze_epoch and not config.schedule.time_budget:
        raise UserError(
            f"save_best_by (--save-best-by) miou never gets an mIoU: --eval-period "
            f"{evaluation.eval_period} is past --unfreeze-epoch "
            f"{config.schedule.unfreeze_epoch}; lower --eval-period."
        )
