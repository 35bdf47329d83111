"""How fast a predictor runs: what ``predict.py --mode fps`` and the benchmarks time."""

from __future__ import annotations

import contextlib
import io
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from utils.errors import UserError
from utils.images import cvtColor
from utils.inference.engines import ENGINES, TorchEngine
from utils.inference.inputs import letterbox_input
from utils.inference.pipeline import class_map, default_batching


def network_seconds(unet, image: Image.Image, test_interval: int) -> float:
    """Seconds per image of the network, softmax and argmax at ``input_shape``, class map to
    the host, on ``image`` letterboxed once: what the original's ``get_FPS`` times."""
    inputs = letterbox_input(cvtColor(image), unet.input_shape)[0][None]
    for repeat in (1, test_interval):  # warm-up, then timed
        start = time.perf_counter()
        for _ in range(repeat):
            class_map(unet.pipeline.input_probabilities(inputs)[0]).cpu()
    return (time.perf_counter() - start) / test_interval


def in_memory(image: Image.Image) -> tuple[Image.Image, None]:
    """A reader for images already in memory (a module-level function: workers pickle it)."""
    return image, None


def throughput(
    unet,
    image: Image.Image,
    batch_size: int = 8,
    num_batches: int = 2,
    num_workers: int | None = None,
) -> float:
    """Images per second of batched ``get_miou_png`` (read, letterbox, network, class map at
    the image's size, to the host) over copies of ``image``, after a warm-up batch."""
    num_workers = default_batching(unet.runtime.device, batch_size, num_workers)[1]
    for count in (batch_size, batch_size * num_batches):
        start = time.perf_counter()
        for _ in unet.pipeline.predict(
            [image] * count, in_memory, batch_size=batch_size, num_workers=num_workers
        ):
            pass
    return count / (time.perf_counter() - start)


def engine_predictors(
    make: Callable[..., object], unet, weights: str | None, folder: Path, exports: list = ()
) -> list:
    """Every engine and precision this machine runs for the model, torch fp32 first: ``unet``
    (what the mode runs); for torch ``weights`` each of torch's precisions, and each other
    engine's on their fp32 ONNX export (made in ``folder``); for the model given if it is an
    export, and each of ``exports`` (an int8 file, say), each engine that opens it.
    ``make(**kwargs)`` builds a predictor; one that cannot be built here is said in a line and
    left out."""
    found = {unet.how(): unet}
    sources = ([unet.model_path] if unet.net is None else []) + [str(e) for e in exports]
    if weights:
        sources.insert(0, weights)
        try:
            mine = unet.net is not None and unet.precision == "fp32"
            torch_fp32 = (
                unet if mine else make(model_path=weights, engine="torch", precision="fp32")
            )
            found.setdefault(torch_fp32.how(), torch_fp32)
            export = folder / "fp32.onnx"
            with contextlib.redirect_stdout(io.StringIO()):  # the export's own lines
                torch_fp32.convert_to_onnx(False, str(export))
            sources.insert(1, str(export))
        except UserError as error:  # onnx missing: the torch rows still run
            print(f"the other engines are not timed: {error}")
    device = unet.runtime.device
    for source in sources:
        for name, engine in ENGINES.items():
            if not engine.can_open(source) or device.type not in engine.devices:
                continue
            if (engine.converts and TorchEngine.can_open(source)) or not engine.available():
                continue  # an engine that converts weights runs their export instead
            for precision in engine.precisions(device, source):
                chosen = precision if engine.takes_precision else None
                try:
                    predictor = make(model_path=source, engine=name, precision=chosen)
                except UserError as error:
                    print(f"{name} {precision} is not timed: {error}")
                    continue
                found.setdefault(predictor.how(), predictor)
    return sorted(found.values(), key=lambda u: not u.how().startswith("torch fp32"))


def command_for(predictor, weights: str | None, folder: Path) -> str:
    """The predict.py command that runs ``predictor``: its own file, or for an export made in
    ``folder`` the weights where its engine opens them, else the export to make first."""
    engine, source = predictor.engine, str(predictor.model_path)
    if Path(source).parent == folder:  # made here
        if not engine.can_open(weights):
            return (
                f"python predict.py --mode export_onnx --model-path {shlex.quote(weights)}, then "
                f"--engine {engine.name} --model-path model_data/models.onnx"
            )
        source = weights
    words = ["python predict.py", "--engine", engine.name, "--model-path", shlex.quote(source)]
    if engine.takes_precision and predictor.precision != "int8":  # int8 is the file's
        words += ["--precision", predictor.precision]
    return " ".join(words)
