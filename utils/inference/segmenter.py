"""What the web page (app.py) does besides drawing its widgets, without Gradio: the models it
lists, the options it runs them with, the predictors it keeps loaded, and each prediction with
its mask PNG, the file get_miou.py writes. The predictor is the project's, ``unet.Unet``, for
weights and ONNX exports alike, which app.py hands in (the library imports no script)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from utils.errors import UserError
from utils.images import read_image
from utils.inference.engines import ENGINES, engine_for

#: The files listed under --logs: each run's best and last weights, and ONNX exports.
WEIGHTS_NAMES = ("best_epoch_weights.pth", "last_epoch_weights.pth", "*.onnx")


#: The page's name for "the engine's default" (None) in its engine and precision lists.
AUTO = "auto"


@dataclass(frozen=True)
class Options:
    """How a model runs: the choices the page offers beside the model (None: the default)."""

    tta: bool = False
    tile: int | None = None
    device: str = "auto"
    precision: str | None = None
    engine: str | None = None

    def for_model(self, path: str) -> dict:
        """The predictor's keywords for ``path``; the precision only where the engine takes
        one (an ONNX model in onnxruntime runs as it was exported)."""
        options = {"tta": self.tta, "tile": self.tile, "device": self.device}
        options["engine"] = self.engine
        if engine_for(path, self.engine).takes_precision:
            options["precision"] = self.precision
        return options


@dataclass(frozen=True)
class Chosen:
    """What the page shows: a model, maybe a second one beside it, and how they run."""

    model: str
    compare: str | None
    options: Options

    def models(self) -> list[str]:
        return [self.model] + ([self.compare] if self.compare else [])


@dataclass
class Prediction:
    """One image through one model: the class map, the seconds the model took, and the folder
    its files are written to (the mask PNG, as get_miou.py writes it, first)."""

    predictor: Any  # unet.Unet
    image: Image.Image
    labels: np.ndarray
    seconds: float
    folder: Path


def check_size(path: str, max_pixels: int) -> None:
    """Refuse an image over ``max_pixels`` before decoding it."""
    limit = f"this page's limit of {max_pixels / 1e6:g} megapixels"
    advice = "shrink it, or segment it in tiles with predict.py --tile 512"
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        raise UserError(f"{Path(path).name} is far over {limit}; {advice}.") from None
    except OSError:
        return  # read_image says what is wrong with it
    if width * height > max_pixels:
        raise UserError(f"{Path(path).name} is {width}x{height}, over {limit}; {advice}.")


#: Predictions the page keeps (their images and files): a long session's disk stays bounded.
KEEP = 8


def forget(prediction: Prediction) -> None:
    """Delete the files of a prediction that left the page's cache."""
    shutil.rmtree(prediction.folder, ignore_errors=True)


def remember(cache: OrderedDict, key, make: Callable, keep: int, drop: Callable | None = None):
    """``cache[key]``, made on a miss; the least recently used beyond ``keep`` are dropped, and
    ``drop(value)`` is called for each (to delete a prediction's files)."""
    if key not in cache:
        cache[key] = make()
        while len(cache) > keep:
            _, value = cache.popitem(last=False)
            if drop is not None:
                drop(value)
    cache.move_to_end(key)
    return cache[key]


class Segmenter:
    """Loaded predictors by (path, options) and the last predictions by (model, image), behind
    one lock: one model runs at a time, on every core. ``load(model_path=..., **options)``
    builds a predictor (``unet.Unet``); ``warn`` shows a sentence to the user (the page's
    warning; print by default)."""

    def __init__(
        self,
        folder: Path,
        max_pixels: int,
        load: Callable[..., Any],
        warn: Callable[[str], None] = print,
    ):
        self.folder, self.max_pixels, self.load, self.warn = folder, max_pixels, load, warn
        self._predictors: OrderedDict = OrderedDict()
        self._predictions: OrderedDict = OrderedDict()
        self._lock = threading.RLock()

    def predictor(self, path: str, options: Options) -> Any:
        """The predictor, loaded once; its warnings (bf16 emulated here...) go to ``warn``."""
        with self._lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make = partial(self.load, model_path=str(path), **options.for_model(path))
            predictor = remember(self._predictors, (path, options), make, keep=4)
        for warning in caught:
            self.warn(str(warning.message))
        return predictor

    def choose(self, wanted: Chosen, previous: Chosen, label: Callable[[str], str] = str) -> Chosen:
        """``wanted`` once its models load; if one fails, ``previous`` stays, and ``warn`` says
        why."""
        for path in wanted.models():
            try:
                self.predictor(path, wanted.options)
            except UserError as error:
                self.warn(f"{label(path)} did not load, so the previous choice stays: {error}")
                return previous
        return wanted

    def predict(self, path: str, options: Options, image_path: str) -> Prediction:
        """The class map of one image file, read as predict.py reads it."""
        key = (path, options, image_path, os.stat(image_path).st_mtime_ns)
        with self._lock:
            return remember(
                self._predictions, key, lambda: self._run(*key[:3]), keep=KEEP, drop=forget
            )

    def _run(self, path: str, options: Options, image_path: str) -> Prediction:
        predictor = self.predictor(path, options)
        check_size(image_path, self.max_pixels)
        try:
            image = read_image(image_path)
        except UserError as error:
            message = str(error).replace(f"'{image_path}'", Path(image_path).name)
            raise UserError(message.replace("re-export or remove it", "upload an image")) from None
        start = time.perf_counter()
        labels = predictor.labels(image)
        seconds = time.perf_counter() - start
        folder = Path(tempfile.mkdtemp(dir=self.folder))
        Image.fromarray(labels).save(folder / f"{Path(image_path).stem}.png")
        return Prediction(predictor, image, labels, seconds, folder)


def find_models(logs: Path, given: list[str]) -> dict[str, str]:
    """``{label: path}``: each --model-path given, then each run's best and last weights (and
    .onnx exports) under ``logs``, the newest first."""
    models = {path: path for path in given}
    listed = {Path(path).resolve() for path in given}  # a given file found again is listed once
    found = [path for name in WEIGHTS_NAMES for path in logs.rglob(name)] if logs.is_dir() else []
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        if path.resolve() not in listed:
            listed.add(path.resolve())
            models.setdefault(str(path.relative_to(logs)), str(path))
    return models


def options_from(
    tta: bool, tile: float | None, device: str, precision: str, engine: str = AUTO
) -> Options:
    """Options from the page's widgets (``auto``: the default)."""
    auto = lambda value: None if value in (None, AUTO) else value  # noqa: E731
    return Options(bool(tta), int(tile) if tile else None, device, auto(precision), auto(engine))


def engine_choices(paths: list[str]) -> list[str]:
    """``auto`` and the engines that can run every one of ``paths`` here."""
    usable = [
        name
        for name, engine in ENGINES.items()
        if engine.available() and all(engine.can_open(path) for path in paths)
    ]
    return [AUTO, *usable]
