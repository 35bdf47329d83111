"""How fast a predictor runs: what ``predict.py --mode fps`` and the benchmarks time."""

from __future__ import annotations

import time

from PIL import Image

from utils.inference import class_map, default_batching, letterbox_input
from utils.utils import cvtColor


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
