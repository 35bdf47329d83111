"""Every setting of train.py, declared once, with the original's default and a line of help.

Each setting is a field of one section dataclass; the section is its group in ``--help``. From
these declarations come the settings that travel beside the weights (:data:`MODEL_KEYS`,
:data:`MODEL_DEFAULTS`), the settings a resumed run cannot change (:data:`FIXED_ON_RESUME`)
here; their validation in :mod:`utils.settings.validation`; the flags in :mod:`utils.settings.cli`
(:func:`~utils.settings.cli.add_setting_flags`); the recipe files that ``train.py --config`` reads
and the ``config.yaml`` a run writes in :mod:`utils.settings.recipes`; and the docs' tables in
``tools/settings_tables.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from nets.losses import LOSSES, original_terms
from nets.unet import BACKBONES
from nets.unet_training import INIT_TYPES
from utils.data.augment import AUGMENTATIONS
from utils.data.datasets import DATASET_FORMATS
from utils.device import PRECISIONS
from utils.errors import UserError
from utils.training.lr_schedule import LR_DECAY_TYPES


def setting(default: Any, help: str, **options: Any) -> Any:
    """A dataclass field for one setting. Options: ``original`` (the original's constant),
    ``choices``, ``metavar``, ``minimum``, ``shown`` (the default as --help shows it),
    ``below`` (an exclusive upper bound), ``travels`` (saved beside the weights), ``fixed``
    (a resumed run cannot change it) and ``original_value`` (the original's value and why the
    default differs from it)."""
    metadata = {"help": help, **options}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# fmt: off
@dataclass(frozen=True)
class DataSettings:
    """data and model"""

    dataset_path: str = setting(
        "VOCdevkit", "data set root: VOCdevkit/ (voc) or the folder with Images/ and Labels/ "
        "(medical)", original="VOCdevkit_path")
    dataset_format: str = setting(
        "voc", "voc: VOC2007/JPEGImages + SegmentationClass; medical: Images + Labels, class 1 "
        "where the label is <= 127.5", choices=DATASET_FORMATS, travels=True, fixed=True)
    num_classes: int = setting(
        21, "number of classes including background: your classes + 1, e.g. 2 + 1",
        original="num_classes", minimum=2, below=256, travels=True, fixed=True)
    name_classes: list[str] | None = setting(
        None, "class names, for charts, counts and legends; saved beside the weights",
        shown="the 21 VOC names for 21 classes, else class_0, class_1, ...", travels=True)
    train_split: str = setting(
        "train", "ids to train on: a split name under ImageSets/Segmentation, or a path to a "
        "file of ids, one per line")
    val_split: str = setting(
        "val", "ids to validate on, as --train-split; without it, or with '', training goes on "
        "without validation (no val loss or mIoU: faster)")
    augment: str = setting(
        "reference", "training augmentation: " + "; ".join(
            f"{a.name} = {a.help}" for a in AUGMENTATIONS.values()), choices=tuple(AUGMENTATIONS))
    train_crop: list[int] | None = setting(
        None, "train on random H x W crops at native resolution instead of whole images "
        "resized to --input-shape; pair it with --tile", metavar=("H", "W"), shown="off")
    backbone: str = setting(
        "vgg", "encoder: " + ", ".join(f"{b.name} ({b.summary})" for b in BACKBONES.values()),
        original="backbone", choices=BACKBONES, travels=True, fixed=True)
    width_mult: float = setting(
        1.0, "the UNet's channels as a multiple of the original's (the encoder's 64 to 512 and "
        "the decoder's): 0.5 computes a quarter as much; the encoders built here only ("
        + ", ".join(b.name for b in BACKBONES.values() if b.scales) + "), without --pretrained",
        travels=True, fixed=True)
    pretrained: bool = setting(
        False, "start the encoder from ImageNet weights in model_data/ (downloaded if missing)",
        original="pretrained")
    model_path: str = setting(
        "model_data/unet_vgg_voc.pth", "weights to start from; matching tensors are loaded, so "
        "another num_classes only resets the head; '' for none (then pretrained, or from "
        "scratch: see recipes/scratch.yaml)", original="model_path")
    allow_backbone_mismatch: bool = setting(
        False, "train even when backbone tensors of --model-path do not fit the model")
    input_shape: list[int] = setting(
        [512, 512], "network input size; multiples of 16 (vgg, vgg16_bn) or 32 (the others)",
        original="input_shape", metavar=("H", "W"), travels=True, fixed=True)
    init_type: str = setting(
        "kaiming", "weight init when not --pretrained; the original's 'normal' (N(0, 0.02)) "
        "leaves a VGG UNet trained from scratch predicting one class", choices=INIT_TYPES,
        original_value=("normal", "N(0, 0.02) leaves a VGG UNet trained from scratch predicting "
                        "one class"))


@dataclass(frozen=True)
class ScheduleSettings:
    """schedule"""

    init_epoch: int = setting(0, "first epoch", original="Init_Epoch", minimum=0)
    freeze_epoch: int = setting(
        50, "epochs with a frozen backbone", original="Freeze_Epoch", minimum=0)
    freeze_batch_size: int = setting(
        2, "batch size while frozen; lower it when the GPU runs out of memory",
        original="Freeze_batch_size", minimum=1)
    unfreeze_epoch: int = setting(
        100, "total number of epochs", original="UnFreeze_Epoch", minimum=1)
    unfreeze_batch_size: int = setting(
        2, "batch size once unfrozen", original="Unfreeze_batch_size", minimum=1)
    freeze_train: bool = setting(
        True, "freeze the backbone for the first --freeze-epoch epochs", original="Freeze_Train")
    val_batch_size: int | None = setting(
        None, "batch size of the val loss", minimum=1,
        shown="the phase's batch size, capped at the val split's size")
    time_budget: float = setting(
        0.0, "seconds from the process's start to the end of training: the epochs that fit, up "
        "to --unfreeze-epoch, refitted after each epoch, the LR schedule following", minimum=0,
        metavar="SECONDS", shown="off: --unfreeze-epoch epochs")


@dataclass(frozen=True)
class OptimizerSettings:
    """optimizer"""

    init_lr: float = setting(
        1e-4, "largest LR, before adapting to the batch size", original="Init_lr", minimum=0)
    min_lr: float | None = setting(
        None, "smallest LR", original="Min_lr", minimum=0, shown="--init-lr * 0.01")
    lr_fit: bool = setting(
        True, "scale the LRs by batch/16 and clamp them to the original's limits (adam: 1e-4 "
        "exactly; sgd: 5e-4 to 0.1); --no-lr-fit uses --init-lr and --min-lr as given")
    optimizer_type: str = setting(
        "adam", "adam, or sgd with Nesterov momentum", original="optimizer_type",
        choices=("adam", "sgd"))
    momentum: float = setting(
        0.9, "SGD momentum / Adam beta1", original="momentum", minimum=0, below=1)
    weight_decay: float = setting(0.0, "weight decay", original="weight_decay", minimum=0)
    lr_decay_type: str = setting(
        "cos", "per-epoch LR schedule", original="lr_decay_type", choices=LR_DECAY_TYPES)

    @property
    def final_lr(self) -> float:
        """--min-lr, or the original's ``Init_lr * 0.01`` when it is not given."""
        return self.init_lr * 0.01 if self.min_lr is None else self.min_lr


@dataclass(frozen=True)
class LossSettings:
    """loss"""

    dice_loss: bool = setting(
        False, "add the Dice loss; the original recommends it for a few classes, or many "
        "classes with a batch of 10 or more", original="dice_loss")
    focal_loss: bool = setting(False, "use Focal loss instead of cross entropy, against "
                               "unbalanced classes", original="focal_loss")
    cls_weights: list[float] | None = setting(None, "one weight per class for CE/Focal",
                                              original="cls_weights", metavar="W", shown="all 1")
    loss: list[str] | None = setting(None, "the loss as terms added up, by name: " + "; ".join(
        f"{t.name} = {t.help}" for t in LOSSES.values()), choices=LOSSES, metavar="TERM",
        shown="ce, or focal with --focal-loss; plus dice with --dice-loss")

    @property
    def terms(self) -> list[str]:
        """The terms the run adds up: ``--loss``, or the original's switches' choice."""
        if self.loss is not None:
            return list(self.loss)
        return original_terms(self.dice_loss, self.focal_loss)


@dataclass(frozen=True)
class EvalSettings:
    """evaluation"""

    eval_flag: bool = setting(
        True, "compute the val mIoU as get_miou.py does during training", original="eval_flag")
    eval_period: int = setting(
        5, "epochs between mIoU evaluations", original="eval_period", minimum=1)
    save_best_by: str = setting(
        "val_loss", "what best_epoch_weights.pth is best at: the lowest val loss, as the "
        "original, or the highest in-training mIoU", choices=("val_loss", "miou"))
    tile: int | None = setting(
        None, "predict and evaluate in windows of this size at native resolution, averaging "
        "overlaps; saved beside the weights", metavar="PIXELS",
        shown="whole images", travels=True)
    stride: int | None = setting(
        None, "distance between the --tile windows", metavar="PIXELS", shown="tile / 2",
        travels=True)


@dataclass(frozen=True)
class RuntimeSettings:
    """runtime"""

    num_workers: int = setting(
        4, "data-loading processes; 0 loads in the main process; lower it on a machine with "
        "little memory", original="num_workers", minimum=0)
    seed: int = setting(11, "random seed", original="seed", minimum=0)
    device: str = setting(
        "auto", "auto = CUDA when available; cuda:N picks a GPU, as does CUDA_VISIBLE_DEVICES",
        original="Cuda", metavar="{auto,cpu,cuda,cuda:N}")
    precision: str = setting(
        "fp32", "fp32 gives the original's numbers; bf16: autocast on CPU or CUDA (fast only "
        "with native bf16: AVX512-BF16/AMX or a GPU); fp16: CUDA autocast (--fp16 is the same); "
        "auto: bf16 where it is native, else fp32",
        original="fp16", choices=PRECISIONS)
    channels_last: bool | None = setting(
        None, "channels-last memory format for the model and batches: faster on a GPU, and on a "
        "CPU with bf16; on a CPU in fp32 the original's NCHW trains faster",
        shown="on with CUDA and with bf16, off on a CPU in fp32")
    tf32: bool = setting(
        True, "let CUDA fp32 convolutions use TF32 tensor cores, PyTorch's default and the "
        "original's behaviour; --no-tf32 keeps fp32 strict (no effect on a CPU)")
    deterministic: bool = setting(
        False, "deterministic algorithms only, cuDNN without autotuning: a resumed run then "
        "reproduces an uninterrupted one bit for bit on CUDA too, at some speed")
    sync_bn: bool = setting(
        False, "SyncBatchNorm across torchrun processes (CUDA; vgg has no BatchNorm); "
        "every BatchNorm layer of every step then waits for all of them: worth it only when "
        "each GPU's share of the batch is small (a few images), where its own batch statistics "
        "are noisy", original="sync_bn")
    distributed: bool = setting(
        False, "the original's switch; multi-GPU training runs under torchrun, which this flag "
        "only checks for", original="distributed")


@dataclass(frozen=True)
class OutputSettings:
    """output"""

    save_period: int = setting(
        5, "save ep*.pth weights every this many epochs, and at the last; 0 saves none (the best "
        "and last weights and the checkpoint stay)", original="save_period", minimum=0)
    save_dir: str = setting("logs", "where weights and logs go", original="save_dir")
# fmt: on

#: The sections of :class:`TrainConfig`, in --help order.
SECTIONS: dict[str, type] = {"data": DataSettings, "schedule": ScheduleSettings,
                             "optimizer": OptimizerSettings, "loss": LossSettings,
                             "evaluation": EvalSettings, "runtime": RuntimeSettings,
                             "output": OutputSettings}  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """All of train.py's settings, one typed section per group."""

    data: DataSettings = field(default_factory=DataSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from ``{setting name: value}``; missing settings take their defaults."""
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            raise UserError(unknown_key_message(unknown[0], "the settings"))
        sections = {
            name: section(**{k: values[k] for k in setting_names(section) if k in values})
            for name, section in SECTIONS.items()
        }
        return cls(**sections)

    def flat(self) -> dict[str, Any]:
        """``{setting name: value}`` over every section, in declaration order."""
        return {
            k: v for name in SECTIONS for k, v in dataclasses.asdict(getattr(self, name)).items()
        }

    def model_settings(self) -> dict[str, Any]:
        """What travels beside the weights (:data:`MODEL_KEYS`)."""
        flat = self.flat()
        return {key: flat[key] for key in MODEL_KEYS}


@dataclass(frozen=True)
class SettingInfo:
    """One declared setting: where it lives, its type, default and help."""

    name: str
    group: str
    type: Any
    default: Any
    help: str
    options: dict

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def optional(self) -> bool:
        return type(None) in typing.get_args(self.type)

    @property
    def value_type(self) -> Any:
        """The type without ``| None``: ``int``, ``list[int]``..."""
        args = [a for a in typing.get_args(self.type) if a is not type(None)]
        return args[0] if isinstance(self.type, types.UnionType) else self.type

    @property
    def item_type(self) -> type:
        """The scalar type: the element type of a list."""
        value = self.value_type
        return typing.get_args(value)[0] if typing.get_origin(value) is list else value

    @property
    def is_list(self) -> bool:
        return typing.get_origin(self.value_type) is list

    @property
    def length(self) -> int | None:
        """The fixed length of a list setting (H W pairs), else None."""
        metavar = self.options.get("metavar")
        return len(metavar) if isinstance(metavar, tuple) else None

    def shown_default(self) -> str:
        """The default as --help and the docs show it."""
        if "shown" in self.options:
            return self.options["shown"]
        return format_value(self.default)

    def describe(self) -> str:
        """Its name and flag, as every message about it says: ``num_classes (--num-classes)``."""
        return f"{self.name} ({self.flag})"


def setting_names(section: type) -> list[str]:
    return [f.name for f in dataclasses.fields(section)]


def _declared() -> dict[str, SettingInfo]:
    out = {}
    for section in SECTIONS.values():
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            options = {k: v for k, v in f.metadata.items() if k != "help"}
            info = (f.name, section.__doc__, hints[f.name], default, f.metadata["help"], options)
            out[f.name] = SettingInfo(*info)
    return out


#: Every setting by name, in declaration order.
SETTINGS: dict[str, SettingInfo] = _declared()
#: The settings saved beside every weights file (``<name>.json``) and in ONNX metadata.
MODEL_KEYS = tuple(name for name, info in SETTINGS.items() if info.options.get("travels"))
#: Their defaults: what weights without a settings file (the original's own) are used with.
MODEL_DEFAULTS = {key: SETTINGS[key].default for key in MODEL_KEYS}
#: Settings that shape the model; a resumed run cannot change them.
FIXED_ON_RESUME = tuple(name for name, info in SETTINGS.items() if info.options.get("fixed"))


def format_value(value: Any) -> str:
    """A value as a user types it on the command line."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return " ".join(format_value(v) for v in value)
    if value == "":
        return "''"
    return str(value)


def unknown_key_message(key: str, where: str) -> str:
    close = difflib.get_close_matches(key, list(SETTINGS), n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else "see train.py --help for the settings."
    return f"{where} set '{key}', which is not a setting of train.py; {hint}"
