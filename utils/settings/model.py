"""What it takes to use a trained model, in one value: its classes and their names, backbone,
input size, tiles and data layout, with the checks and fallbacks written once.

train.py writes them beside every weights file (``<name>.json``) and into its checkpoint, the
ONNX export into the model's metadata; the predictor, ``get_miou.py`` and ``summary.py`` read
them back through :meth:`ModelSettings.resolve` (via the engine that reads the file:
``utils.inference.engines``), where what the user gives wins over what was saved, which wins over
the original's defaults. The fields are :data:`~utils.settings.config.MODEL_KEYS`, in order
(tested).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nets.unet import Unet, backbone_prefixes, width_mult_of
from utils.data.classes import default_class_names
from utils.errors import UserError
from utils.settings.config import MODEL_DEFAULTS, MODEL_KEYS, SETTINGS
from utils.training.writer import write_text_durably

#: The settings file's key for the checksum of the weights' tensors.
CHECKSUM_KEY = "checksum"


@dataclass(frozen=True)
class ModelSettings:
    """The settings of :data:`~utils.settings.config.MODEL_KEYS`, defaults as declared there."""

    dataset_format: str = MODEL_DEFAULTS["dataset_format"]
    num_classes: int = MODEL_DEFAULTS["num_classes"]
    name_classes: tuple[str, ...] | None = MODEL_DEFAULTS["name_classes"]
    backbone: str = MODEL_DEFAULTS["backbone"]
    width_mult: float = MODEL_DEFAULTS["width_mult"]
    input_shape: tuple[int, int] = tuple(MODEL_DEFAULTS["input_shape"])
    tile: int | None = MODEL_DEFAULTS["tile"]
    stride: int | None = MODEL_DEFAULTS["stride"]

    def __post_init__(self):
        shape = tuple(int(side) for side in self.input_shape)
        object.__setattr__(self, "input_shape", shape)
        if self.name_classes is not None:
            object.__setattr__(self, "name_classes", tuple(self.name_classes))

    @property
    def encoder(self) -> str:
        """The backbone, with its width where not the original's: ``vgg``, ``vgg x0.25``."""
        return self.backbone if self.width_mult == 1 else f"{self.backbone} x{self.width_mult:g}"

    def network(self) -> Unet:
        """The untrained UNet these settings describe (classes, backbone, width)."""
        return Unet(
            num_classes=self.num_classes, backbone=self.backbone, width_mult=self.width_mult
        )

    @property
    def class_names(self) -> list[str]:
        """The names given or saved, else the defaults (the 21 VOC names, or class_0...)."""
        return list(self.name_classes or default_class_names(self.num_classes))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, in :data:`MODEL_KEYS` order: the settings file and ONNX metadata."""
        values = dataclasses.asdict(self)
        values["input_shape"] = list(self.input_shape)
        if self.name_classes is not None:
            values["name_classes"] = list(self.name_classes)
        return values

    @classmethod
    def resolve(cls, given: dict[str, Any], saved: dict[str, Any], source: str) -> ModelSettings:
        """Each setting as given (None: not given), else as ``saved`` with the model in
        ``source`` (a settings file, ONNX metadata), else the original's default.

        A class count given against the model's own is refused naming both, before the class
        names (which follow the model's count) could be blamed for it; the names are checked by
        :meth:`check_names`.
        """
        given = {key: value for key, value in given.items() if value is not None}
        saved_classes = saved.get("num_classes")
        if saved_classes is not None and given.get("num_classes", saved_classes) != saved_classes:
            raise UserError(
                f"the model has {saved_classes} classes ({source} says so) but num_classes "
                f"(--num-classes) is {given['num_classes']}; drop --num-classes, or give "
                f"{saved_classes}."
            )
        return cls(**{**MODEL_DEFAULTS, **saved, **given})

    def check_names(self, given: dict[str, Any], source: str) -> None:
        """One name per class, or a sentence blaming where the names came from: ``given``
        (the flag) or ``source`` (called once the weights are known to fit)."""
        names = self.name_classes
        if names is None or len(names) == self.num_classes:
            return
        info = SETTINGS["name_classes"]
        where = info.describe() if given.get("name_classes") else f"the names in {source}"
        raise UserError(
            f"{where} has {len(names)} names but the model has {self.num_classes} classes; give "
            f"one name per class with {info.flag}."
        )

    def check_weights(self, state: dict, path: str | Path) -> None:
        """Say which setting to change when a state dict does not fit these settings."""
        head = state.get("final.weight")
        if head is not None and head.shape[0] != self.num_classes:
            raise UserError(
                f"{path} was trained with {head.shape[0]} classes but num_classes is "
                f"{self.num_classes}; set num_classes (--num-classes) to {head.shape[0]}."
            )
        for other, prefix in backbone_prefixes().items():
            if other != self.backbone and any(key.startswith(prefix) for key in state):
                raise UserError(
                    f"{path} holds {other} weights but backbone is {self.backbone}; set backbone "
                    f"(--backbone) to {other}."
                )
        held = width_mult_of(state)
        if held is not None and held != self.width_mult:
            raise wrong_width(path, held, self.width_mult)


def wrong_width(path: str | Path, held: float, wanted: float) -> UserError:
    """The one sentence for weights of another width than the settings ask for."""
    return UserError(
        f"{path} was trained with width_mult {held:g} but width_mult is {wanted:g}; set "
        f"width_mult (--width-mult) to {held:g}, or give weights of width {wanted:g}."
    )


def settings_path(weights_path: str | Path) -> Path:
    """``logs/last_epoch_weights.pth`` -> ``logs/last_epoch_weights.json``."""
    return Path(weights_path).with_suffix(".json")


def write_settings_file(
    weights_path: str | Path, settings: ModelSettings, checksum: str | None = None
) -> Path:
    """The settings beside a weights file, and the checksum of its tensors (see
    :func:`utils.training.checkpoint.tensors_checksum`), written whole or not at all."""
    values = settings.to_dict() | ({CHECKSUM_KEY: checksum} if checksum else {})
    return write_text_durably(settings_path(weights_path), json.dumps(values, indent=2))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(
            f"the settings file '{path}' beside the weights cannot be read ({error}); delete it "
            "and give --num-classes, --backbone, --width-mult and --input-shape."
        ) from error
    if not isinstance(saved, dict):
        raise UserError(
            f"the settings file '{path}' beside the weights does not hold settings; delete it "
            "and give --num-classes, --backbone, --width-mult and --input-shape."
        )
    return saved


def read_settings_file(weights_path: str | Path | None) -> dict[str, Any]:
    """The settings saved beside a weights file; empty when there are none (the original's
    files, or no weights)."""
    if not weights_path:
        return {}
    path = settings_path(weights_path)
    if not path.is_file():
        return {}
    saved = _read_json(path)
    return {key: saved[key] for key in MODEL_KEYS if key in saved}


def saved_checksum(weights_path: str | Path) -> str | None:
    """The checksum of the weights' tensors saved beside them, if any."""
    path = settings_path(weights_path)
    return _read_json(path).get(CHECKSUM_KEY) if path.is_file() else None
