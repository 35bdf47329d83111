"""The web page over a long session: memory and disk across many ``/segment`` calls, through
the page's own :class:`~utils.inference.segmenter.Segmenter` (what each call runs, without the
browser)::

    python -m benchmarks.page_memory --calls 1000

Each call segments a new image (the page caches the last 8 predictions, so a repeated image
would cost nothing) with a small VGG UNet of random weights at 64x64, and writes the overlay
beside the mask, as app.py does. Every ``--every`` calls it prints the process's resident
memory (VmRSS) and the prediction folders and bytes on disk under the page's folder. The
page's Gradio copies are not counted here: app.py keeps them in the same temporary folder,
where Gradio deletes those over 10 minutes old, and the whole folder at exit.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nets.unet import Unet as Network
from nets.unet_training import weights_init
from unet import Unet
from utils.inference.segmenter import KEEP, Options, Segmenter


def random_weights(path: Path) -> Path:
    """A 4-class VGG UNet with seeded kaiming weights: busy maps, as a trained model's."""
    torch.manual_seed(0)
    network = Network(num_classes=4)
    weights_init(network, "kaiming")
    torch.save(network.state_dict(), path)
    return path


def resident_mib() -> float:
    """This process's resident memory, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def on_disk(folder: Path) -> tuple[int, int]:
    """(prediction folders, bytes of their files) under the page's folder."""
    folders = [path for path in folder.iterdir() if path.is_dir()]
    size = sum(file.stat().st_size for path in folders for file in path.iterdir())
    return len(folders), size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="segment calls (default 1000)")
    parser.add_argument("--every", type=int, default=100, help="print every N calls")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="page-memory-") as tmp:
        tmp = Path(tmp)
        weights = random_weights(tmp / "model.pth")
        page = tmp / "page"
        page.mkdir()
        load = lambda **given: Unet(**given, input_shape=[64, 64], num_classes=4)  # noqa: E731
        segmenter = Segmenter(page, 10**8, load)
        options = Options(device="cpu")
        image = tmp / "upload.png"
        print(f"{args.calls} calls, {args.size}x{args.size} images; the page keeps {KEEP}")
        print("calls  RSS MiB  folders  MiB on disk  ms/call")
        start = time.perf_counter()
        for call in range(1, args.calls + 1):
            pixels = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(image)
            prediction = segmenter.predict(str(weights), options, str(image))
            overlay = prediction.predictor.draw(prediction.image, prediction.labels)
            overlay.save(prediction.folder / "upload_overlay.png")
            if call % args.every == 0:
                folders, size = on_disk(page)
                per_call = 1000 * (time.perf_counter() - start) / call
                print(f"{call:5d}  {resident_mib():7.0f}  {folders:7d}  {size / 2**20:11.2f}  "
                      f"{per_call:7.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
