"""The predictor classes of the original, ``unet.Unet`` and ``unet.Unet_ONNX``.

from unet import Unet
unet = Unet(model_path="logs/best_epoch_weights.pth")   # settings from the file beside it
unet.detect_image(Image.open("street.jpg")).save("img_out/street.png")
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from nets.unet import BACKBONE_PREFIX, check_input_shape, check_tile
from nets.unet import Unet as UnetModel
from utils.checkpoint import read_settings, read_state_dict, settings_path
from utils.classes import (
    VOC_CLASSES,
    class_colors,
    colorize,
    default_class_names,
    draw_legend,
    overlay,
)
from utils.config import MODEL_DEFAULTS, MODEL_KEYS, SETTINGS
from utils.device import Runtime, resolve_device, resolve_runtime, use_device
from utils.errors import UserError
from utils.inference import (
    InferencePipeline,
    class_map,
    default_batching,
    letterbox_input,
    read_file,
)
from utils.utils import cvtColor

__all__ = ["VOC_CLASSES", "Unet", "Unet_ONNX", "class_colors", "default_class_names"]


def check_weights_fit(state: dict, num_classes: int, backbone: str, path) -> None:
    """Say which setting to change when a weights file does not fit the model."""
    head = state.get("final.weight")
    if head is not None and head.shape[0] != num_classes:
        raise UserError(
            f"{path} was trained with {head.shape[0]} classes but num_classes is {num_classes}; "
            f"set num_classes (--num-classes) to {head.shape[0]}."
        )
    for other, prefix in BACKBONE_PREFIX.items():
        if other != backbone and any(k.startswith(prefix) for k in state):
            raise UserError(
                f"{path} holds {other} weights but backbone is {backbone}; set backbone "
                f"(--backbone) to {other}."
            )


class FilePrediction(NamedTuple):
    """One file's prediction: its class map, and its RGB image when kept; or why it failed."""

    path: object
    labels: np.ndarray | None
    image: np.ndarray | None = None
    error: str | None = None


class SegmentationPredictor:
    """What both predictors share: their settings, one :class:`InferencePipeline` around their
    forward function, and the original's drawing and counting.

    Subclasses set ``_defaults`` and call :meth:`_set_up` with their runtime and forward.
    """

    _defaults: dict = {}

    def _apply_settings(self, kwargs: dict, saved: dict) -> None:
        """Each setting from ``kwargs`` (None counts as not given), else from ``saved`` (the
        settings that came with the model), else the reference's default."""
        unknown = sorted(set(kwargs) - set(self._defaults))
        if unknown:
            raise UserError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(self._defaults)}."
            )
        given = {name: value for name, value in kwargs.items() if value is not None}
        known = {name: value for name, value in saved.items() if name in self._defaults}
        for name, value in {**self._defaults, **known, **given}.items():
            setattr(self, name, value)
        self.input_shape = [int(self.input_shape[0]), int(self.input_shape[1])]
        if self.mix_type not in (0, 1, 2):
            raise UserError(f"mix_type must be 0, 1 or 2, not {self.mix_type!r}.")

    def _set_up(self, runtime: Runtime, forward) -> None:
        """After the model is checked against the settings: the names, the colours and the
        pipeline."""
        if self.name_classes is not None and len(self.name_classes) != self.num_classes:
            raise UserError(
                f"name_classes (--name-classes) has {len(self.name_classes)} names but the model "
                f"has {self.num_classes} classes; give one name per class."
            )
        self.runtime = runtime
        self.colors = class_colors(self.num_classes)
        self.pipeline = InferencePipeline(
            forward, self.input_shape, runtime, tile=self.tile, stride=self.stride, tta=self.tta
        )

    def probabilities(self, image: Image.Image) -> np.ndarray:
        """(H, W, num_classes) class probabilities at the image's own size, on the host."""
        return self.pipeline.probabilities(image).permute(1, 2, 0).cpu().numpy()

    def labels(self, image: Image.Image) -> np.ndarray:
        """The (H, W) uint8 class map of an image at its own size."""
        return self.pipeline.labels(image).cpu().numpy()

    def get_miou_png(self, image: Image.Image) -> Image.Image:
        """The class-index map at the image's size, as an 8-bit image (what get_miou saves)."""
        return Image.fromarray(self.labels(image))

    def detect_image(
        self, image: Image.Image, count: bool = False, name_classes: Sequence[str] | None = None
    ) -> Image.Image:
        """The segmentation drawn as ``mix_type`` asks: 0 blend, 1 colours only, 2 cut-out."""
        image = cvtColor(image)
        labels = self.labels(image)
        if count:
            self.print_counts(labels, name_classes or self.class_names())
        return self.draw(image, labels)

    def draw(self, image: Image.Image | np.ndarray, labels: np.ndarray) -> Image.Image:
        """Draw a class map over its RGB image as ``mix_type`` asks (the original's pixels)."""
        if self.mix_type == 2:
            return Image.fromarray(np.asarray(image) * (labels != 0)[..., None])
        if self.mix_type == 1:
            return colorize(labels, self.colors)
        return overlay(image, labels, self.colors)

    def class_names(self) -> list[str]:
        """The names of the classes: given, saved with the weights, or the defaults."""
        return list(self.name_classes or default_class_names(self.num_classes))

    def save_legend(self, folder: str | Path) -> Path | None:
        """``legend.png`` in ``folder``: each class's overlay colour and name (none for
        mix_type 2, which draws no colours)."""
        if self.mix_type == 2:
            return None
        return draw_legend(self.class_names(), self.colors, Path(folder) / "legend.png")

    def predict_files(
        self,
        paths: Sequence,
        batch_size: int | None = None,
        num_workers: int | None = None,
        keep_image: bool = False,
        skip_unreadable: bool = False,
    ) -> Iterator[FilePrediction]:
        """Yield a :class:`FilePrediction` per file, in order, ``batch_size`` per pass.

        DataLoader workers (``num_workers``) read and letterbox the files; ``keep_image``
        passes each decoded image along, for drawing. None: the device's defaults
        (:func:`~utils.inference.default_batching`). With ``skip_unreadable`` a file that
        cannot be read comes back with ``error`` set instead of stopping everything.
        """
        batch_size, num_workers = default_batching(self.runtime.device, batch_size, num_workers)
        for sample, labels in self.pipeline.predict(
            paths, read_file, batch_size=batch_size, num_workers=num_workers,
            keep_image=keep_image, skip_unreadable=skip_unreadable,
        ):  # fmt: skip
            yield FilePrediction(paths[sample.index], labels, sample.image, sample.error)

    def print_counts(self, pr: np.ndarray, name_classes: Sequence[str]) -> None:
        counts = np.bincount(pr.ravel(), minlength=self.num_classes)
        total = pr.size
        print("-" * 63)
        print(f"|{'Key':>25} | {'Value':>15} | {'Ratio':>15}|")
        print("-" * 63)
        for i, n in enumerate(counts):
            if n > 0:
                name = name_classes[i] if i < len(name_classes) else str(i)
                print(f"|{name:>25} | {n:>15} | {100 * n / total:>14.2f}%|")
                print("-" * 63)


class Unet(SegmentationPredictor):
    """Load a trained UNet and segment images with the reference's pipeline.

    kwargs and defaults are the original's, plus ``device`` (auto/cpu/cuda/cuda:N; by default
    taken from ``cuda``), ``precision`` (fp32/bf16/fp16), ``channels_last`` (None: the faster
    layout for the device), ``tile``/``stride`` (sliding windows for large images), ``tta``
    (horizontal-flip averaging) and ``name_classes``. The settings train.py saves beside its
    weights (``<name>.json``, :data:`~utils.config.MODEL_KEYS`) that are not given come from
    that file, and without one (the original's files) from the original's defaults.
    """

    _defaults = {
        "model_path": SETTINGS["model_path"].default,
        **MODEL_DEFAULTS,
        "mix_type": 0,
        "cuda": True,
        "device": None,
        "precision": SETTINGS["precision"].default,
        "channels_last": None,
        "tta": False,
    }

    def __init__(self, **kwargs):
        saved = read_settings(kwargs.get("model_path") or self._defaults["model_path"])
        self._apply_settings(kwargs, saved)
        check_input_shape(self.input_shape[0], self.input_shape[1], self.backbone)
        check_tile(self.tile, self.stride, self.backbone)
        device = self.device or ("auto" if self.cuda else "cpu")
        if self.cuda and self.device is None and not torch.cuda.is_available():
            print("cuda=True but no CUDA GPU is visible: running on the CPU.")
        runtime = resolve_runtime(device, self.precision, channels_last=self.channels_last)
        use_device(runtime.device)
        self.channels_last = runtime.channels_last
        self.runtime = runtime
        self.generate()
        self._set_up(runtime, self._forward)
        layout = "channels-last" if self.channels_last else "NCHW"
        source = f"; settings from {settings_path(self.model_path)}" if saved else ""
        print(f"{self.model_path} model, and classes loaded ({self.num_classes} classes, "
              f"{self.backbone}, {self.input_shape[0]}x{self.input_shape[1]}, "
              f"{self.runtime.device.type} {self.precision}, {layout}{source}).")  # fmt: skip

    def generate(self) -> None:
        """Build the network and load ``model_path`` strictly."""
        state = read_state_dict(self.model_path)
        check_weights_fit(state, self.num_classes, self.backbone, self.model_path)
        self.net = UnetModel(num_classes=self.num_classes, backbone=self.backbone)
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise UserError(
                f"{self.model_path} does not fit a {self.backbone} UNet with {self.num_classes} "
                f"classes ({str(error).splitlines()[0]}); check model_path, backbone and "
                "num_classes."
            ) from error
        self.net = self.runtime.prepare(self.net.eval())

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def get_FPS(self, image: Image.Image, test_interval: int) -> float:
        """Seconds per image of the whole ``get_miou_png`` pipeline, after a warm-up run."""
        self.get_miou_png(image)
        start = time.perf_counter()
        for _ in range(test_interval):
            self.get_miou_png(image)
        return (time.perf_counter() - start) / test_interval

    def network_seconds(self, image: Image.Image, test_interval: int) -> float:
        """Seconds per image of the network, softmax and argmax at ``input_shape``, class map to
        the host, on ``image`` letterboxed once: what the original's ``get_FPS`` times."""
        inputs = letterbox_input(cvtColor(image), self.input_shape)[0][None]
        for repeat in (1, test_interval):  # warm-up, then timed
            start = time.perf_counter()
            for _ in range(repeat):
                class_map(self.pipeline.input_probabilities(inputs)[0]).cpu()
        return (time.perf_counter() - start) / test_interval

    def throughput(
        self,
        image: Image.Image,
        batch_size: int = 8,
        num_batches: int = 2,
        num_workers: int | None = None,
    ) -> float:
        """Images per second of batched ``get_miou_png`` (read, letterbox, network, class map at
        the image's size, to the host) over copies of ``image``, after a warm-up batch."""
        num_workers = default_batching(self.runtime.device, batch_size, num_workers)[1]
        for count in (batch_size, batch_size * num_batches):
            start = time.perf_counter()
            for _ in self.pipeline.predict(
                [image] * count, _as_is, batch_size=batch_size, num_workers=num_workers
            ):
                pass
        return count / (time.perf_counter() - start)

    def settings(self) -> dict:
        """What is needed to use this model: saved beside weights and in ONNX metadata."""
        return {name: getattr(self, name) for name in MODEL_KEYS}

    def convert_to_onnx(self, simplify: bool, model_path: str, dynamic: bool = False) -> None:
        """Export to ONNX (opset 12, input "images", output "output"), check it with onnx and
        compare onnxruntime's output with torch's on a random input. The settings go into the
        model's metadata; ``dynamic`` leaves batch, height and width free."""
        try:
            import onnx
        except ImportError as error:
            raise UserError("exporting needs the onnx package: pip install onnx.") from error
        path = Path(model_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        net = copy.deepcopy(self.net).float().cpu().eval()  # the predictor stays as it is
        x = torch.rand(1, 3, *self.input_shape)
        free = {0: "batch", 2: "height", 3: "width"}
        axes = {"images": free, "output": free}
        print(f"Starting export with onnx {onnx.__version__}.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net, x, str(path), opset_version=12, input_names=["images"],
                output_names=["output"], dynamic_axes=axes if dynamic else None, dynamo=False,
            )  # fmt: skip
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        if simplify:
            try:
                import onnxsim
            except ImportError:
                print("onnxsim is not installed: the graph is saved unsimplified.")
            else:
                model, ok = onnxsim.simplify(model)
                if not ok:
                    raise UserError(
                        "onnxsim could not check the simplified model; use --no-simplify."
                    )
        for key, value in self.settings().items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.save(model, str(path))
        print(f"Onnx model save as {path}")
        try:
            import onnxruntime
        except ImportError:
            print("onnxruntime is not installed: skipped the check against torch.")
            return
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        theirs = session.run(None, {"images": x.numpy()})[0]
        with torch.no_grad():
            ours = net(x).numpy()
        difference = np.abs(theirs - ours).max()
        print(f"onnxruntime vs torch on a random input: max abs difference {difference:.2e}")


def _as_is(image: Image.Image) -> tuple[Image.Image, None]:
    """A reader for images already in memory (a module-level function, so workers can pickle it)."""
    return image, None


class Unet_ONNX(SegmentationPredictor):  # noqa: N801 - the reference's name
    """The same pipeline on an exported model through onnxruntime.

    ``num_classes``, ``input_shape``, ``backbone`` and ``name_classes`` not given come from the
    model's metadata (our exports) or its input and output shapes (the original's). ``device``:
    auto uses onnxruntime's CUDA provider when it has one, cuda[:N] insists on it, cpu does not.
    """

    _defaults = {
        "onnx_path": "model_data/models.onnx",
        **MODEL_DEFAULTS,
        "mix_type": 0,
        "tta": False,
        "device": "auto",
    }

    def __init__(self, **kwargs):
        try:
            import onnxruntime
        except ImportError as error:
            raise UserError("predict_onnx needs onnxruntime: pip install onnxruntime.") from error
        path = kwargs.get("onnx_path") or self._defaults["onnx_path"]
        if not Path(path).is_file():
            raise UserError(
                f"--onnx-path '{path}' does not exist; export it with --mode export_onnx."
            )
        providers, device = onnx_providers(kwargs.get("device"), onnxruntime)
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as error:  # onnxruntime raises its own types for unreadable files
            reason = str(error).strip().splitlines()[0]
            raise UserError(
                f"--onnx-path '{path}' is not a readable ONNX model ({reason})."
            ) from None
        inputs, outputs = self.session.get_inputs()[0].shape, self.session.get_outputs()[0].shape
        saved = {key: json.loads(value)
                 for key, value in self.session.get_modelmeta().custom_metadata_map.items()
                 if key in self._defaults}  # fmt: skip
        if all(isinstance(size, int) for size in inputs[2:]):
            saved.setdefault("input_shape", list(inputs[2:]))
        if isinstance(outputs[1], int):
            saved.setdefault("num_classes", outputs[1])
        self._apply_settings(kwargs, saved)
        self._check_shapes(inputs, outputs)
        self._one_at_a_time = inputs[0] == 1
        self._set_up(Runtime(device), self._forward)
        print(f"{self.onnx_path} onnx model loaded ({self.num_classes} classes, "
              f"{self.input_shape[0]}x{self.input_shape[1]}, {providers[0]}).")  # fmt: skip

    def _check_shapes(self, inputs: list, outputs: list) -> None:
        """The input size and class count asked for must be the exported model's."""
        exported = inputs[2:]
        if all(isinstance(size, int) for size in exported):
            if list(exported) != list(self.input_shape):
                raise UserError(
                    f"'{self.onnx_path}' was exported for {exported[0]}x{exported[1]} inputs but "
                    f"--input-shape is {self.input_shape[0]} {self.input_shape[1]}; drop "
                    f"--input-shape (or give {exported[0]} {exported[1]}), or export with "
                    "--dynamic for any size."
                )
        else:
            check_input_shape(self.input_shape[0], self.input_shape[1], self.backbone)
        if isinstance(outputs[1], int) and outputs[1] != self.num_classes:
            raise UserError(
                f"'{self.onnx_path}' predicts {outputs[1]} classes but --num-classes is "
                f"{self.num_classes}; drop --num-classes (or give {outputs[1]})."
            )

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.contiguous().cpu().numpy()
        if self._one_at_a_time and len(x) > 1:  # exported for batch 1, as the original does
            output = np.concatenate([self.session.run(None, {"images": x[i : i + 1]})[0]
                                     for i in range(len(x))])  # fmt: skip
        else:
            output = self.session.run(None, {"images": x})[0]
        return torch.from_numpy(output).to(images.device)


def onnx_providers(device: str | None, onnxruntime) -> tuple[list, torch.device]:
    """onnxruntime's providers for ``--device``, and the torch device post-processing runs on."""
    name = device or "auto"
    available = onnxruntime.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if name.startswith("cuda") and not has_cuda:
        raise UserError(
            f"--device {name} needs onnxruntime with its CUDA provider, and this one has "
            f"{', '.join(available)}; pip install onnxruntime-gpu, or use --device cpu."
        )
    if name.startswith("cuda") or (name == "auto" and has_cuda):
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        torch_device = (torch.device("cuda", index) if torch.cuda.is_available()
                        else torch.device("cpu"))  # fmt: skip
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"], (
            torch_device
        )
    resolve_device(name)  # an unknown name is refused here
    return ["CPUExecutionProvider"], torch.device("cpu")
