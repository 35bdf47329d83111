"""The predictor class of the reference, ``unet.Unet``: load weights once, predict images.

from unet import Unet
unet = Unet(model_path="logs/best_epoch_weights.pth", num_classes=4)
unet.detect_image(Image.open("img/street.jpg")).save("img_out/street.png")
"""

from __future__ import annotations

import colorsys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nets.unet import BACKBONE_PREFIX, check_input_shape
from nets.unet import Unet as UnetModel
from utils.checkpoint import read_state_dict
from utils.device import resolve_runtime
from utils.errors import UserError
from utils.inference import predict_probs
from utils.utils import cvtColor, voc_palette

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """The reference's palette: VOC colours up to 21 classes, evenly spaced hues beyond."""
    if num_classes <= 21:
        return voc_palette(21)[:num_classes]
    hsv = [(x / num_classes, 1.0, 1.0) for x in range(num_classes)]
    rgb = [colorsys.hsv_to_rgb(*x) for x in hsv]
    return [(int(r * 255), int(g * 255), int(b * 255)) for r, g, b in rgb]


def default_class_names(num_classes: int) -> list[str]:
    return VOC_CLASSES if num_classes == 21 else [f"class_{i}" for i in range(num_classes)]


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


class Unet:
    """Load a trained UNet and segment images with the reference's pipeline.

    kwargs and defaults are the reference's, plus ``device`` (auto/cpu/cuda; by default taken
    from ``cuda``), ``precision`` (fp32/bf16/fp16), ``channels_last``, ``tile``/``stride``
    (sliding windows for large images) and ``tta`` (horizontal-flip averaging).
    """

    _defaults = {
        "model_path": "model_data/unet_vgg_voc.pth",
        "num_classes": 21,
        "backbone": "vgg",
        "input_shape": [512, 512],
        "mix_type": 0,
        "cuda": True,
        "device": None,
        "precision": "fp32",
        "channels_last": False,
        "tile": None,
        "stride": None,
        "tta": False,
    }

    def __init__(self, **kwargs):
        self._apply_settings(kwargs)
        if self.mix_type not in (0, 1, 2):
            raise UserError(f"mix_type must be 0, 1 or 2, not {self.mix_type!r}.")
        check_input_shape(self.input_shape[0], self.input_shape[1], self.backbone)
        device = self.device or ("auto" if self.cuda else "cpu")
        if self.cuda and self.device is None and not torch.cuda.is_available():
            print("cuda=True but no CUDA GPU is visible: running on the CPU.")
        self.runtime = resolve_runtime(device, self.precision)
        self.colors = class_colors(self.num_classes)
        self.generate()
        print(f"{self.model_path} model, and classes loaded ({self.num_classes} classes, "
              f"{self.backbone}, {self.input_shape[0]}x{self.input_shape[1]}, "
              f"{self.runtime.device.type} {self.precision}).")  # fmt: skip

    def _apply_settings(self, kwargs: dict) -> None:
        """Set every default, overridden by ``kwargs``; unknown names are refused."""
        unknown = sorted(set(kwargs) - set(self._defaults))
        if unknown:
            raise UserError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(self._defaults)}."
            )
        for name, value in {**self._defaults, **kwargs}.items():
            setattr(self, name, value)

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
        self.net = self.net.eval().to(self.runtime.device)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def probabilities(self, image: Image.Image) -> np.ndarray:
        """(H, W, num_classes) class probabilities at the image's own size."""
        return predict_probs(
            self.net, image, self.input_shape, self.runtime, self.channels_last,
            tile=self.tile, stride=self.stride, tta=self.tta,
        )  # fmt: skip

    def detect_image(
        self, image: Image.Image, count: bool = False, name_classes: Sequence[str] | None = None
    ) -> Image.Image:
        """The segmentation drawn as ``mix_type`` asks: 0 blend, 1 colours only, 2 cut-out."""
        image = cvtColor(image)
        pr = self.probabilities(image).argmax(axis=-1)
        if count:
            self.print_counts(pr, name_classes or default_class_names(self.num_classes))
        palette = np.array(self.colors, dtype=np.uint8)
        if self.mix_type == 0:
            return Image.blend(image, Image.fromarray(palette[pr]), 0.7)
        if self.mix_type == 1:
            return Image.fromarray(palette[pr])
        return Image.fromarray((np.array(image) * (pr != 0)[..., None]).astype(np.uint8))

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

    def get_miou_png(self, image: Image.Image) -> Image.Image:
        """The class-index map at the image's size, as an 8-bit image (what get_miou saves)."""
        return Image.fromarray(self.probabilities(image).argmax(axis=-1).astype(np.uint8))

    def get_FPS(self, image: Image.Image, test_interval: int) -> float:
        """Seconds per image of the whole ``get_miou_png`` pipeline, after a warm-up run."""
        self.get_miou_png(image)
        self._sync()
        start = time.perf_counter()
        for _ in range(test_interval):
            self.get_miou_png(image)
        self._sync()
        return (time.perf_counter() - start) / test_interval

    def model_seconds(self, test_interval: int) -> float:
        """Seconds per forward pass of the network alone at ``input_shape``."""
        x = torch.rand(1, 3, *self.input_shape, device=self.runtime.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), self.runtime.autocast():
            self.net(x)
            self._sync()
            start = time.perf_counter()
            for _ in range(test_interval):
                self.net(x)
            self._sync()
        return (time.perf_counter() - start) / test_interval

    def _sync(self) -> None:
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize()

    def convert_to_onnx(self, simplify: bool, model_path: str, dynamic: bool = False) -> None:
        """Export to ONNX (opset 12, input "images", output "output"), check it with onnx and
        compare onnxruntime's output with torch's on a random input."""
        try:
            import onnx
        except ImportError as error:
            raise UserError("exporting needs the onnx package: pip install onnx.") from error
        path = Path(model_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        net = self.net.float().cpu().eval()
        x = torch.rand(1, 3, *self.input_shape)
        axes = {"images": {2: "height", 3: "width"}, "output": {2: "height", 3: "width"}}
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
                onnx.save(model, str(path))
        print(f"Onnx model save as {path}")
        self.net.to(self.runtime.device)
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


class Unet_ONNX(Unet):  # noqa: N801 - the reference's name
    """The same pipeline on an exported model through onnxruntime (CPU)."""

    _defaults = {
        "onnx_path": "model_data/models.onnx",
        "num_classes": 21,
        "input_shape": [512, 512],
        "mix_type": 0,
        "tile": None,
        "stride": None,
        "tta": False,
    }

    def __init__(self, **kwargs):
        self._apply_settings(kwargs)
        try:
            import onnxruntime
        except ImportError as error:
            raise UserError("predict_onnx needs onnxruntime: pip install onnxruntime.") from error
        if not Path(self.onnx_path).is_file():
            raise UserError(
                f"--onnx-path {self.onnx_path} does not exist; export it with --mode export_onnx."
            )
        self.runtime = resolve_runtime("cpu", "fp32")
        self.channels_last = False
        self.colors = class_colors(self.num_classes)
        self.session = onnxruntime.InferenceSession(
            self.onnx_path, providers=["CPUExecutionProvider"]
        )
        self.net = self._run
        print(f"{self.onnx_path} onnx model loaded ({self.num_classes} classes).")

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        output = self.session.run(None, {"images": images.numpy()})[0]
        if output.shape[1] != self.num_classes:
            raise UserError(
                f"{self.onnx_path} predicts {output.shape[1]} classes but num_classes is "
                f"{self.num_classes}; set --num-classes to {output.shape[1]}."
            )
        return torch.from_numpy(output)
