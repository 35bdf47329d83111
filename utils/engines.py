"""The two engines behind ``unet.Unet``: a PyTorch model or an onnxruntime session.

They differ only in the network call. Each reads the settings its file carries (the settings
file beside a ``.pth``, the metadata of an ``.onnx``), checks the model against the settings the
predictor resolved, and is then the ``forward`` of :class:`~utils.inference.InferencePipeline`:
letterboxed float images (``/ 255``) in, logits out, on the runtime's device. The letterbox,
tiles, TTA, batching, drawing and files around it are the same code for both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nets.unet import Unet as UnetModel
from utils.checkpoint import read_state_dict
from utils.config import MODEL_KEYS
from utils.device import Runtime, parse_device, resolve_device
from utils.errors import UserError
from utils.model_settings import ModelSettings, read_settings_file, settings_path

ENGINES = ("torch", "onnxruntime")
#: The pip command that installs onnxruntime, in every message that needs it.
ONNXRUNTIME_PIP = "pip install onnxruntime (onnxruntime-gpu for CUDA)"


def is_onnx(model_path: str | Path) -> bool:
    """Whether ``model_path`` names an ONNX export (by its suffix)."""
    return Path(model_path).suffix.lower() == ".onnx"


def engine_for(model_path: str | Path, engine: str | None = None) -> str:
    """The engine for ``model_path``: ``engine`` when given (and able to run the file), else
    onnxruntime for a ``.onnx`` file and torch for anything else."""
    onnx = is_onnx(model_path)
    if engine is None:
        return "onnxruntime" if onnx else "torch"
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}.")
    if engine == "torch" and onnx:
        raise UserError(
            f"'{model_path}' is an ONNX model, which --engine torch cannot run; drop --engine "
            "(a .onnx file selects onnxruntime), or point --model-path at the .pth weights."
        )
    if engine == "onnxruntime" and not onnx:
        raise UserError(
            f"--engine onnxruntime runs .onnx models and '{model_path}' is not one; export it "
            f"first: python predict.py --mode export_onnx --model-path {model_path}"
        )
    return engine


def import_onnxruntime(what: str = "running an ONNX model"):
    """onnxruntime, or one sentence with the pip command."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"{what} needs onnxruntime: {ONNXRUNTIME_PIP}.") from None
    return onnxruntime


class TorchEngine:
    """A ``.pth`` (or ``checkpoint_last.pth``) in a PyTorch model, strictly loaded."""

    name = "torch"

    def __init__(self, model_path: str | Path):
        self.model_path = model_path
        self.net: torch.nn.Module | None = None

    def saved_settings(self, given: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The settings file beside the weights (empty for the original's files: ``given``
        and the original's defaults then apply), and its name."""
        return read_settings_file(self.model_path), f"'{settings_path(self.model_path)}'"

    def load(self, settings: ModelSettings, runtime: Runtime) -> None:
        """Build the network for ``settings`` and load the weights, on the runtime's device."""
        state = read_state_dict(self.model_path)
        settings.check_weights(state, self.model_path)
        net = UnetModel(num_classes=settings.num_classes, backbone=settings.backbone)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise UserError(
                f"{self.model_path} does not fit a {settings.backbone} UNet with "
                f"{settings.num_classes} classes ({str(error).splitlines()[0]}); check "
                "model_path, backbone and num_classes."
            ) from error
        self.net = runtime.prepare(net.eval())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class OnnxEngine:
    """An exported model in onnxruntime: CUDA's provider with ``--device cuda`` (or auto, when
    onnxruntime has it), the CPU's otherwise. The post-processing runs on the matching torch
    device."""

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, device: str | None = None):
        onnxruntime = import_onnxruntime()
        path = Path(model_path)
        if not path.is_file():
            raise UserError(
                f"--model-path '{path}' does not exist; export one with python predict.py "
                "--mode export_onnx."
            )
        self.model_path = path
        self.providers, self.device = onnx_providers(device, onnxruntime)
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=self.providers)
        except Exception as error:  # onnxruntime raises its own types for unreadable files
            reason = str(error).strip().splitlines()[0]
            raise UserError(f"'{path}' is not a readable ONNX model ({reason}).") from None
        self.input_name = self.session.get_inputs()[0].name  # "images" in our exports
        self.inputs = self.session.get_inputs()[0].shape
        self.outputs = self.session.get_outputs()[0].shape
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.one_at_a_time = self.inputs[0] == 1

    def saved_settings(self, given: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The settings in the model's metadata (our exports), else what its input and output
        shapes say (the original's export: batch 1, 512x512, 21 classes); a free size that
        nothing names must be ``given``."""
        try:
            saved = {
                key: json.loads(value) for key, value in self.metadata.items() if key in MODEL_KEYS
            }
        except ValueError as error:
            raise UserError(
                f"the metadata of '{self.model_path}' cannot be read ({error}); export the model "
                "again with predict.py --mode export_onnx."
            ) from None
        if all(isinstance(size, int) for size in self.inputs[2:]):
            saved.setdefault("input_shape", list(self.inputs[2:]))
        if isinstance(self.outputs[1], int):
            saved.setdefault("num_classes", self.outputs[1])
        needed = [
            flag
            for key, flag in (
                ("input_shape", "--input-shape H W"),
                ("num_classes", "--num-classes N"),
            )
            if key not in saved and given.get(key) is None
        ]
        if needed:
            raise UserError(
                f"'{self.model_path}' has no settings in its metadata (it was not exported by "
                f"this project) and its graph leaves them free; give {' and '.join(needed)}."
            )
        return saved, f"the metadata of '{self.model_path}'"

    @property
    def int8(self) -> dict | None:
        """How an int8 export was calibrated (its metadata), or None for an fp32 model."""
        from utils.quantize import CALIBRATION_KEY

        found = self.metadata.get(CALIBRATION_KEY)
        return json.loads(found) if found else None

    def load(self, settings: ModelSettings, runtime: Runtime) -> None:
        """The input size asked for must be one the exported graph takes."""
        exported = self.inputs[2:]
        if all(isinstance(size, int) for size in exported):
            if tuple(exported) != settings.input_shape:
                raise UserError(
                    f"'{self.model_path}' was exported for {exported[0]}x{exported[1]} inputs but "
                    f"--input-shape is {settings.input_shape[0]} {settings.input_shape[1]}; drop "
                    f"--input-shape (or give {exported[0]} {exported[1]}), or export with "
                    "--dynamic for any size."
                )
        classes = self.outputs[1]
        if isinstance(classes, int) and classes != settings.num_classes:
            raise UserError(
                f"'{self.model_path}' predicts {classes} classes but --num-classes is "
                f"{settings.num_classes}; drop --num-classes (or give {classes})."
            )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.contiguous().cpu().numpy()
        if self.one_at_a_time and len(x) > 1:  # exported for batch 1, as the original does
            output = np.concatenate(
                [self.session.run(None, {self.input_name: x[i : i + 1]})[0] for i in range(len(x))]
            )
        else:
            output = self.session.run(None, {self.input_name: x})[0]
        return torch.from_numpy(output).to(images.device)


def onnx_providers(device: str | None, onnxruntime) -> tuple[list, torch.device]:
    """onnxruntime's providers for ``--device``, and the torch device post-processing runs on
    (the CPU where torch itself has no CUDA)."""
    name = device or "auto"
    kind, index = parse_device(name)
    available = onnxruntime.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if kind == "cuda" and not has_cuda:
        raise UserError(
            f"--device {name} needs onnxruntime with its CUDA provider, and this one has "
            f"{', '.join(available)}; pip install onnxruntime-gpu, or use --device cpu."
        )
    if kind == "cpu" or not has_cuda:
        return ["CPUExecutionProvider"], torch.device("cpu")
    torch_device = resolve_device(name) if torch.cuda.is_available() else torch.device("cpu")
    gpu = torch_device.index if torch_device.type == "cuda" else (index or 0)
    return [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"], torch_device


def settings_of(
    model_path: str | Path | None, given: dict[str, Any], engine: str | None = None
) -> ModelSettings:
    """The settings a model is used with (what the predictor resolves), without loading it:
    for evaluating predictions already made, or describing a model. No model: ``given`` over
    the original's defaults."""
    if not model_path:
        saved, source = {}, "no model"
    elif engine_for(model_path, engine) == "onnxruntime":
        saved, source = OnnxEngine(model_path, "cpu").saved_settings(given)
    else:
        saved, source = TorchEngine(model_path).saved_settings(given)
    settings = ModelSettings.resolve(given, saved, source)
    settings.check_names(given, source)
    return settings
