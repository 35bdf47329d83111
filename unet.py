"""The predictor classes of the original, ``unet.Unet`` and ``unet.Unet_ONNX``.

from unet import Unet
unet = Unet(model_path="logs/best_epoch_weights.pth")   # settings from the file beside it
unet.detect_image(Image.open("street.jpg")).save("img_out/street.png")
unet = Unet(model_path="model_data/models.onnx")        # the same, in onnxruntime
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from nets.unet import check_input_shape, check_tile
from utils.data.classes import VOC_CLASSES, class_colors, default_class_names
from utils.device import use_device
from utils.drawing import draw_labels, draw_legend
from utils.errors import UserError
from utils.images import cvtColor
from utils.inference.engines import engine_for
from utils.inference.inputs import read_file
from utils.inference.pipeline import InferencePipeline, default_batching
from utils.settings.config import MODEL_DEFAULTS, MODEL_KEYS, SETTINGS
from utils.settings.model import ModelSettings

__all__ = ["VOC_CLASSES", "Unet", "Unet_ONNX", "class_colors", "default_class_names"]


def refuse_unknown(kwargs: dict, known: dict) -> None:
    """One sentence for keywords a predictor does not take, naming those it does."""
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}.")


class FilePrediction(NamedTuple):
    """One file's prediction: its class map, its RGB image when kept and one class's 8-bit
    probability map when asked; or why it failed."""

    path: object
    labels: np.ndarray | None
    image: np.ndarray | None = None
    error: str | None = None
    scores: np.ndarray | None = None


class Unet:
    """Load a trained UNet, from a ``.pth`` in PyTorch, an ``.onnx`` in onnxruntime or any of
    them in OpenVINO (the engines of :mod:`utils.inference.engines`), and segment images with the
    reference's pipeline.

    kwargs and defaults are the original's, plus ``engine`` (None: by the file; a name of
    :data:`utils.inference.engines.ENGINES`), ``device`` (auto/cpu/cuda/cuda:N; by default taken
    from ``cuda``), ``precision`` (None: the engine's default, fp32 for torch), ``channels_last``
    (None: the faster layout for the device), ``num_threads`` (None: torch's),
    ``tile``/``stride`` (sliding windows for large images), ``tta`` (True or "flip": averaged
    with the mirrored image; "d4": with its 8 turns and mirrors) and ``name_classes``. The
    settings a model carries (train.py's ``<name>.json`` beside the weights, an export's
    metadata; :data:`~utils.settings.config.MODEL_KEYS`) that are not given come from there, and
    without any (the original's files) from the original's defaults.
    """

    _defaults = {
        "model_path": SETTINGS["model_path"].default,
        **MODEL_DEFAULTS,
        "mix_type": 0,
        "cuda": True,
        "engine": None,
        "device": None,
        "precision": None,
        "channels_last": None,
        "num_threads": None,
        "tta": False,
    }

    def __init__(self, **kwargs):
        options = self._options(kwargs)
        given = {key: options[key] for key in MODEL_KEYS}
        device = options["device"] or ("auto" if options["cuda"] else "cpu")
        if options["cuda"] and options["device"] is None and not torch.cuda.is_available():
            print("cuda=True but no CUDA GPU is visible: running on the CPU.")
        if options["num_threads"]:
            torch.set_num_threads(options["num_threads"])
        engine = engine_for(options["model_path"], options["engine"])
        self.engine = engine(
            options["model_path"],
            device=device,
            precision=options["precision"],
            channels_last=options["channels_last"],
            num_threads=options["num_threads"],
        )
        runtime = self.engine.runtime
        saved, source = self.engine.saved_settings(given)
        self.settings = ModelSettings.resolve(given, saved, source)
        settings = self.settings
        check_input_shape(settings.input_shape[0], settings.input_shape[1], settings.backbone)
        check_tile(settings.tile, settings.stride, settings.backbone)
        use_device(runtime.device)
        self.engine.load(settings)
        settings.check_names(given, source)
        # the original's attributes (``engine``, given as a name, is the engine itself here)
        options.pop("engine")
        options["precision"] = self.engine.precision
        self.__dict__.update({**options, **settings.to_dict()})
        self.channels_last, self.runtime = runtime.channels_last, runtime
        self.colors = class_colors(settings.num_classes)
        self.pipeline = InferencePipeline(
            self._forward,
            settings.input_shape,
            runtime,
            tile=settings.tile,
            stride=settings.stride,
            tta=options["tta"],
            fixed_size=self.engine.fixed_size,
        )
        print(
            f"{self.model_path} model, and classes loaded ({self.describe()}"
            f"{'; settings from ' + source if saved else ''})."
        )

    def _options(self, kwargs: dict) -> dict:
        """The kwargs over the defaults (None counts as not given), the unknown refused."""
        refuse_unknown(kwargs, Unet._defaults)
        options = {**Unet._defaults, **{k: v for k, v in kwargs.items() if v is not None}}
        for key in MODEL_KEYS:  # not given: from the model, else the original's default
            options[key] = kwargs.get(key)
        if options["mix_type"] not in (0, 1, 2):
            raise UserError(f"mix_type must be 0, 1 or 2, not {options['mix_type']!r}.")
        return options

    def how(self) -> str:
        """The engine and precision: ``torch fp32, NCHW``, ``onnxruntime int8``..."""
        return self.engine.how()

    def describe(self) -> str:
        """``4 classes, vgg, 512x512, on cpu: torch fp32, NCHW`` (``vgg x0.5`` at half width)."""
        settings = self.settings
        height, width = settings.input_shape
        return (
            f"{settings.num_classes} classes, {settings.encoder}, {height}x{width}, on "
            f"{self.runtime.device.type}: {self.how()}"
        )

    def generate(self) -> None:
        """(Re)load the weights, as the original's ``generate``."""
        self.engine.load(self.settings)

    @property
    def net(self) -> torch.nn.Module | None:
        """The PyTorch network (None in the other engines), as the original's ``self.net``."""
        return self.engine.net

    @net.setter
    def net(self, module: torch.nn.Module) -> None:
        self.engine.net = module

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.engine(images)

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
        return draw_labels(image, labels, self.colors, self.mix_type)

    def class_names(self) -> list[str]:
        """The names of the classes: given, saved with the model, or the defaults."""
        return self.settings.class_names

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
        scores_of: int | None = None,
    ) -> Iterator[FilePrediction]:
        """Yield a :class:`FilePrediction` per file, in order, ``batch_size`` per pass.

        DataLoader workers (``num_workers``) read and letterbox the files; ``keep_image``
        passes each decoded image along, for drawing. None: the device's defaults
        (:func:`~utils.inference.pipeline.default_batching`). With ``skip_unreadable`` a file that
        cannot be read comes back with ``error`` set instead of stopping everything.
        ``scores_of``: a class whose probability comes back too, in 255ths.
        """
        batch_size, num_workers = default_batching(self.runtime.device, batch_size, num_workers)
        for sample, maps in self.pipeline.predict(
            paths,
            read_file,
            batch_size=batch_size,
            num_workers=num_workers,
            keep_image=keep_image,
            skip_unreadable=skip_unreadable,
            scores_of=scores_of,
        ):
            labels, scores = (maps, None) if maps is None or scores_of is None else maps
            yield FilePrediction(paths[sample.index], labels, sample.image, sample.error, scores)

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

    def get_FPS(self, image: Image.Image, test_interval: int) -> float:
        """Seconds per image of the whole ``get_miou_png`` pipeline, after a warm-up run."""
        self.get_miou_png(image)
        start = time.perf_counter()
        for _ in range(test_interval):
            self.get_miou_png(image)
        return (time.perf_counter() - start) / test_interval

    def convert_to_onnx(self, simplify: bool, model_path: str, dynamic: bool = False) -> None:
        """Export to ONNX, as the original's method (see
        :func:`utils.inference.export.export_onnx`)."""
        from utils.inference.export import export_onnx

        if self.net is None:
            raise UserError(
                f"--mode export_onnx exports PyTorch weights, and {self.how()} runs "
                f"'{self.model_path}'; give the .pth weights with --engine torch (the default "
                "for a .pth)."
            )
        export_onnx(self.net, self.settings, model_path, simplify=simplify, dynamic=dynamic)


class Unet_ONNX(Unet):  # noqa: N801 - the reference's name
    """The original's predictor for an exported model: :class:`Unet` in onnxruntime, the model
    named by ``onnx_path`` (default ``model_data/models.onnx``) instead of ``model_path``."""

    _defaults = {
        "onnx_path": "model_data/models.onnx",
        **{k: v for k, v in Unet._defaults.items() if k not in ("model_path", "engine")},
    }

    def __init__(self, **kwargs):
        refuse_unknown(kwargs, self._defaults)
        self.onnx_path = kwargs.pop("onnx_path", None) or self._defaults["onnx_path"]
        super().__init__(model_path=self.onnx_path, engine="onnxruntime", **kwargs)
