"""The original's two phases: a frozen backbone at one batch size, then unfrozen at another,
each with its learning rates; and the check, before the first epoch, that every phase's batches
fit the splits and the processes."""

from __future__ import annotations

from dataclasses import dataclass

from utils.data.datasets import UnetDataset, check_split_size
from utils.distributed import DistInfo
from utils.errors import UserError
from utils.settings.config import OptimizerSettings, ScheduleSettings, TrainConfig
from utils.training.lr_schedule import fit_lr


@dataclass(frozen=True)
class Phase:
    """A phase: whether the backbone is frozen, and the batch size."""

    frozen: bool
    batch_size: int

    @classmethod
    def at(cls, schedule: ScheduleSettings, epoch: int) -> Phase:
        frozen = schedule.freeze_train and epoch < schedule.freeze_epoch
        size = schedule.freeze_batch_size if frozen else schedule.unfreeze_batch_size
        return cls(frozen, size)

    @property
    def name(self) -> str:
        return "Freeze" if self.frozen else "Unfreeze"


def phase_lrs(settings: OptimizerSettings, phase: Phase) -> tuple[float, float]:
    """The phase's first and last LR after the original's batch-size fit."""
    return fit_lr(
        settings.init_lr,
        settings.final_lr,
        phase.batch_size,
        settings.optimizer_type,
        settings.lr_fit,
    )


def val_batch_size(
    requested: int | None, phase: Phase, val_set: UnetDataset | None, dist_info: DistInfo
) -> int | None:
    """``requested``, else the phase's batch, capped at the val split and a multiple of the
    process count: a small val split is never refused for the batch size."""
    if val_set is None:
        return None
    size = min(requested or phase.batch_size, len(val_set))
    size -= size % dist_info.world_size
    if size == 0:
        raise UserError(
            f"the val split has {len(val_set)} image(s), fewer than the {dist_info.world_size} "
            "processes; add val images or run fewer processes."
        )
    return size


def check_batches(
    config: TrainConfig, train_set, val_set, start_epoch: int, dist_info: DistInfo
) -> None:
    """Before the first epoch: every phase's batch must fit the train split and the processes,
    and the val batch the val split."""
    schedule = config.schedule
    phases = {Phase.at(schedule, epoch) for epoch in range(start_epoch, schedule.unfreeze_epoch)}
    for phase in sorted(phases, key=lambda p: p.batch_size):
        check_split_size(len(train_set), phase.batch_size, "train")
        if phase.batch_size % dist_info.world_size:
            raise UserError(
                f"batch size {phase.batch_size} cannot be split evenly over "
                f"{dist_info.world_size} processes; use a multiple of the process count."
            )
        val_batch_size(schedule.val_batch_size, phase, val_set, dist_info)
    if config.evaluation.save_best_by == "miou" and val_set is None:
        raise UserError(
            "save_best_by (--save-best-by) miou needs the mIoU of a val split, and there is "
            "none; give --val-split or use --save-best-by val_loss."
        )
