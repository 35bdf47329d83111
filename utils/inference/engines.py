"""The engines behind ``unet.Unet``, in one table: :data:`ENGINES`, one class per engine.

An engine says which files it opens, which devices and precisions it runs, how it loads a model
and calls the network, and how it describes itself; everything around the call (letterbox,
tiles, TTA, batching, post-processing, drawing, files) is the same code for every engine
(:mod:`utils.inference.pipeline`). Each reads the settings its file carries (the settings file
beside a ``.pth``, an export's metadata), checks the model against the settings the predictor
resolved, and is then the ``forward`` of :class:`~utils.inference.pipeline.InferencePipeline`:
letterboxed float images (``/ 255``) on its :attr:`~Engine.runtime`'s device in, logits out. A new
engine is one class here, registered with :func:`register_engine`; predict.py, get_miou.py, the web
page and ``--mode fps`` read the table and ask nothing else.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from utils.device import (
    Runtime,
    cpu_has_native_bf16,
    gpu_has_native_bf16,
    parse_device,
    resolve_device,
    resolve_runtime,
)
from utils.errors import UserError
from utils.settings.config import MODEL_KEYS
from utils.settings.model import ModelSettings, read_settings_file, settings_path
from utils.training.checkpoint import read_state_dict

#: Every engine by name, in the order --help and the fps table list them.
ENGINES: dict[str, type[Engine]] = {}


def register_engine(engine: type[Engine]) -> type[Engine]:
    """Add ``engine`` to :data:`ENGINES` (a class decorator)."""
    ENGINES[engine.name] = engine
    return engine


class Engine:
    """What runs the network. Subclasses set the class attributes and implement
    :meth:`read_settings`, :meth:`load` and :meth:`__call__`; :meth:`__init__` takes the
    runtime options and sets :attr:`runtime` (where the outputs are post-processed) and
    :attr:`precision`."""

    #: Its name, as ``--engine`` takes it.
    name: ClassVar[str] = ""
    #: One line for --help, the fps table and the page.
    summary: ClassVar[str] = ""
    #: The file suffixes it opens (lower case).
    opens: ClassVar[tuple[str, ...]] = ()
    #: The suffixes it runs when no --engine is given.
    default_for: ClassVar[tuple[str, ...]] = ()
    #: The module it needs, and how to install it.
    package: ClassVar[str | None] = None
    install: ClassVar[str] = ""
    #: Whether --precision chooses how it runs (an ONNX model in onnxruntime runs as exported).
    takes_precision: ClassVar[bool] = True
    #: The device kinds it runs on.
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    #: Whether it runs weights (.pth) by converting them first (OpenVINO, through ONNX).
    converts: ClassVar[bool] = False

    runtime: Runtime
    precision: str
    net: torch.nn.Module | None = None
    #: Whether the network takes only the input size it was exported for (set by load).
    fixed_size: bool = False

    @classmethod
    def available(cls) -> bool:
        return cls.package is None or importlib.util.find_spec(cls.package) is not None

    @classmethod
    def require(cls):
        """Its package, or one sentence with the command that installs it."""
        if cls.package is None:
            return None
        try:
            return importlib.import_module(cls.package)
        except ImportError:
            raise UserError(f"--engine {cls.name} needs {cls.package}: {cls.install}.") from None

    @classmethod
    def can_open(cls, model_path: str | Path) -> bool:
        return Path(model_path).suffix.lower() in cls.opens

    @classmethod
    def precisions(cls, device: torch.device, model_path: str | Path) -> tuple[str, ...]:
        """The precisions it runs well for ``model_path`` on ``device`` (the first its default):
        what the fps table times and the page offers."""
        raise NotImplementedError

    @classmethod
    def read_settings(
        cls, model_path: str | Path, given: dict[str, Any]
    ) -> tuple[dict[str, Any], str]:
        """The settings the file carries (empty: ``given`` and the original's defaults apply),
        and where they come from, for messages; without loading the model."""
        raise NotImplementedError

    def saved_settings(self, given: dict[str, Any]) -> tuple[dict[str, Any], str]:
        return type(self).read_settings(self.model_path, given)

    def load(self, settings: ModelSettings) -> None:
        """Load the model for ``settings``, or say in one sentence why it does not fit them."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def how(self) -> str:
        """``torch fp32, NCHW``, ``onnxruntime int8``, ``openvino bf16``."""
        return f"{self.name} {self.precision}"


def engine_for(model_path: str | Path, name: str | None = None) -> type[Engine]:
    """The engine for ``model_path``: ``name`` when given (and able to open the file), else the
    one whose default the suffix is (onnxruntime for ``.onnx``, openvino for OpenVINO's
    ``.xml``), else torch."""
    suffix = Path(model_path).suffix.lower()
    if name is None:
        return next((e for e in ENGINES.values() if suffix in e.default_for), ENGINES["torch"])
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}.")
    engine = ENGINES[name]
    if not engine.can_open(model_path):
        openers = [e.name for e in ENGINES.values() if e.can_open(model_path)]
        others = f" (--engine {' or '.join(openers)} can)" if openers else ""
        hint = {
            ".onnx": "point --model-path at the .pth weights, or drop --engine",
            ".xml": "drop --engine",
        }.get(suffix, f"export it first: python predict.py --mode export_onnx --model-path "
                      f"{model_path}")  # fmt: skip
        raise UserError(
            f"--engine {name} opens {', '.join(engine.opens)} files, and '{model_path}' is not "
            f"one{others}; {hint}."
        )
    return engine


def settings_of(
    model_path: str | Path | None, given: dict[str, Any], engine: str | None = None
) -> ModelSettings:
    """The settings a model is used with (what the predictor resolves), without loading it:
    for evaluating predictions already made, or describing a model. No model: ``given`` over
    the original's defaults."""
    if not model_path:
        saved, source = {}, "no model"
    else:
        saved, source = engine_for(model_path, engine).read_settings(model_path, given)
    settings = ModelSettings.resolve(given, saved, source)
    settings.check_names(given, source)
    return settings


def load_network(model_path: str | Path, settings: ModelSettings) -> torch.nn.Module:
    """The UNet of ``settings`` with the weights of ``model_path``, strictly loaded, on the CPU."""
    state = read_state_dict(model_path)
    settings.check_weights(state, model_path)
    net = settings.network()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise UserError(
            f"{model_path} does not fit a {settings.backbone} UNet with "
            f"{settings.num_classes} classes ({str(error).splitlines()[0]}); check "
            "model_path, backbone, width_mult and num_classes."
        ) from error
    return net.eval()


@register_engine
class TorchEngine(Engine):
    """A ``.pth`` (or ``checkpoint_last.pth``) in a PyTorch model, strictly loaded."""

    name = "torch"
    summary = "PyTorch, as the original: fp32, bf16 (native on AMX, AVX512-BF16 or a GPU), fp16"
    opens = (".pth",)  # and any other file that no engine opens by default

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "auto",
        precision: str | None = None,
        channels_last: bool | None = None,
        num_threads: int | None = None,
    ):
        self.model_path = model_path
        self.runtime = resolve_runtime(device, precision or "fp32", channels_last=channels_last)
        self.precision = self.runtime.precision

    @classmethod
    def can_open(cls, model_path: str | Path) -> bool:
        suffix = Path(model_path).suffix.lower()
        return not any(suffix in engine.default_for for engine in ENGINES.values())

    @classmethod
    def precisions(cls, device: torch.device, model_path: str | Path) -> tuple[str, ...]:
        if device.type == "cuda":
            return ("fp32", "bf16", "fp16") if gpu_has_native_bf16() else ("fp32", "fp16")
        return ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",)

    @classmethod
    def read_settings(
        cls, model_path: str | Path, given: dict[str, Any]
    ) -> tuple[dict[str, Any], str]:
        return read_settings_file(model_path), f"'{settings_path(model_path)}'"

    def load(self, settings: ModelSettings) -> None:
        self.net = self.runtime.prepare(load_network(self.model_path, settings))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def how(self) -> str:
        layout = "channels-last" if self.runtime.channels_last else "NCHW"
        return f"torch {self.precision}, {layout}"


def takes_one_size(inputs: list) -> bool:
    """Whether an exported graph's input dimensions fix its height and width (ints, where a
    ``--dynamic`` export has names)."""
    return all(isinstance(size, int) for size in inputs[2:])


def exported_settings(
    metadata: dict[str, str], inputs: list, outputs: list, path: Path, given: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """The settings in an export's metadata (our exports), else what its input and output
    shapes say (the original's export: batch 1, 512x512, 21 classes); a free size that nothing
    names must be ``given``."""
    try:
        saved = {key: json.loads(value) for key, value in metadata.items() if key in MODEL_KEYS}
    except ValueError as error:
        raise UserError(
            f"the metadata of '{path}' cannot be read ({error}); export the model again with "
            "predict.py --mode export_onnx."
        ) from None
    if takes_one_size(inputs):
        saved.setdefault("input_shape", list(inputs[2:]))
    if isinstance(outputs[1], int):
        saved.setdefault("num_classes", outputs[1])
    needed = [
        flag
        for key, flag in (("input_shape", "--input-shape H W"), ("num_classes", "--num-classes N"))
        if key not in saved and given.get(key) is None
    ]
    if needed:
        raise UserError(
            f"'{path}' has no settings in its metadata (it was not exported by this project) "
            f"and its graph leaves them free; give {' and '.join(needed)}."
        )
    return saved, f"the metadata of '{path}'"


def check_exported(path: Path, inputs: list, outputs: list, settings: ModelSettings) -> None:
    """The input size asked for must be one the exported graph takes, and its classes the
    settings' count."""
    exported = inputs[2:]
    if takes_one_size(inputs) and tuple(exported) != settings.input_shape:
        raise UserError(
            f"'{path}' was exported for {exported[0]}x{exported[1]} inputs but --input-shape is "
            f"{settings.input_shape[0]} {settings.input_shape[1]}; drop --input-shape (or give "
            f"{exported[0]} {exported[1]}), or export with --dynamic for any size."
        )
    classes = outputs[1]
    if isinstance(classes, int) and classes != settings.num_classes:
        raise UserError(
            f"'{path}' predicts {classes} classes but --num-classes is {settings.num_classes}; "
            f"drop --num-classes (or give {classes})."
        )


def run_in_batches_of_one(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, one: bool):
    """``run(x)``, or image by image for a graph exported for batch 1, as the original does."""
    if one and len(x) > 1:
        return np.concatenate([run(x[i : i + 1]) for i in range(len(x))])
    return run(x)


#: The pip command that installs onnxruntime, in every message that needs it.
ONNXRUNTIME_PIP = "pip install onnxruntime (onnxruntime-gpu for CUDA)"


def import_onnxruntime(what: str = "running an ONNX model"):
    """onnxruntime, or one sentence with the pip command."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"{what} needs onnxruntime: {ONNXRUNTIME_PIP}.") from None
    return onnxruntime


def require_file(path: Path) -> None:
    """An exported model file must exist: else one sentence with the command that makes one."""
    if not path.is_file():
        raise UserError(
            f"--model-path '{path}' does not exist; export one with python predict.py --mode "
            "export_onnx."
        )


@register_engine
class OnnxRuntimeEngine(Engine):
    """An exported model in onnxruntime: CUDA's provider with ``--device cuda`` (or auto, when
    onnxruntime has it), the CPU's otherwise. It runs as it was exported (fp32, or int8 with
    ``--int8``); the post-processing runs on the matching torch device."""

    name = "onnxruntime"
    summary = "ONNX Runtime, for a .onnx export, as exported: fp32, or int8 (--int8)"
    opens = (".onnx",)
    default_for = (".onnx",)
    package = "onnxruntime"
    install = ONNXRUNTIME_PIP
    takes_precision = False

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "auto",
        precision: str | None = None,
        channels_last: bool | None = None,
        num_threads: int | None = None,
    ):
        onnxruntime = import_onnxruntime()
        path = Path(model_path)
        require_file(path)
        self.model_path = path
        self.session, post_device = _onnxruntime_session(onnxruntime, path, device, num_threads)
        self.runtime = Runtime(post_device)
        self.input_name = self.session.get_inputs()[0].name  # "images" in our exports
        self.inputs = self.session.get_inputs()[0].shape
        self.outputs = self.session.get_outputs()[0].shape
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.precision = "int8" if self.int8 else "fp32"
        if precision not in (None, "auto", "fp32", self.precision):
            raise UserError(
                f"--precision {precision} is not how '{path}' runs in onnxruntime: as it was "
                f"exported ({self.precision}); drop --precision, or use --engine torch with "
                "the .pth weights, or --engine openvino."
            )

    @classmethod
    def precisions(cls, device: torch.device, model_path: str | Path) -> tuple[str, ...]:
        return ("int8",) if is_int8_onnx(model_path) else ("fp32",)

    @classmethod
    def read_settings(
        cls, model_path: str | Path, given: dict[str, Any]
    ) -> tuple[dict[str, Any], str]:
        engine = cls(model_path, device="cpu")
        return exported_settings(engine.metadata, engine.inputs, engine.outputs,
                                 engine.model_path, given)  # fmt: skip

    @property
    def int8(self) -> dict | None:
        """How an int8 export was calibrated (its metadata), or None for an fp32 model."""
        from utils.inference.quantize import CALIBRATION_KEY

        found = self.metadata.get(CALIBRATION_KEY)
        return json.loads(found) if found else None

    def load(self, settings: ModelSettings) -> None:
        check_exported(self.model_path, self.inputs, self.outputs, settings)
        self.fixed_size = takes_one_size(self.inputs)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.contiguous().cpu().numpy()
        run = lambda batch: self.session.run(None, {self.input_name: batch})[0]  # noqa: E731
        output = run_in_batches_of_one(run, x, self.inputs[0] == 1)
        return torch.from_numpy(output).to(images.device)


def is_int8_onnx(model_path: str | Path) -> bool:
    """Whether an ONNX file is our int8 export (its metadata says how it was calibrated)."""
    from utils.inference.quantize import CALIBRATION_KEY

    try:
        import onnx

        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable: the engine says why when it opens it
        return False
    return any(entry.key == CALIBRATION_KEY for entry in model.metadata_props)


def _onnxruntime_session(onnxruntime, path: Path, device: str | None, num_threads: int | None):
    """The session on onnxruntime's providers for ``--device``, and the torch device that
    post-processes its outputs (the CPU where torch itself has no CUDA)."""
    name = device or "auto"
    kind, index = parse_device(name)
    available = onnxruntime.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if kind == "cuda" and not has_cuda:
        raise UserError(
            f"--device {name} needs onnxruntime with its CUDA provider, and this one has "
            f"{', '.join(available)}; pip install onnxruntime-gpu, or use --device cpu."
        )
    providers, torch_device = ["CPUExecutionProvider"], torch.device("cpu")
    if kind != "cpu" and has_cuda:
        torch_device = resolve_device(name) if torch.cuda.is_available() else torch.device("cpu")
        gpu = torch_device.index if torch_device.type == "cuda" else (index or 0)
        providers = [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own types for unreadable files
        reason = str(error).strip().splitlines()[0]
        raise UserError(f"'{path}' is not a readable ONNX model ({reason}).") from None
    return session, torch_device


# the third engine registers itself when imported: one file, one row of the table
from utils.inference.openvino_engine import OpenVinoEngine  # noqa: E402

__all__ = ["ENGINES", "Engine", "OnnxRuntimeEngine", "OpenVinoEngine", "TorchEngine"]
