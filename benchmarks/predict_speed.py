"""Prediction speed: the original's pipeline against ours, on this machine's CPU or GPU, in one run.

The original's ``get_miou_png``/``detect_image``/``get_FPS`` are replayed by the test oracle
``oracle/original.py`` (host softmax, ``cv2.resize``, numpy argmax) around the same
network; ours is ``unet.Unet`` (post-processing on the device, batched evaluation)::

    python -m benchmarks.predict_speed                 # the README's table
    python -m benchmarks.predict_speed --repeats 1 --eval-images 16   # quicker

Rows, in ms per image (best of ``--repeats``; the evaluations are timed once): the network +
argmax at the input size in each precision and layout, beside the original's ``get_FPS``
(its fp32 -> bf16 + channels-last ratio is the "ceiling" of what bf16 can give);
``get_miou_png`` and ``detect_image`` on ``street.jpg`` (1330x1330); a ``get_miou.py``-style
evaluation of generated images (500x375; read, predict, save the PNG) at ``--batch-size`` and at
the device's defaults; the ISBI 2012 held-out ids 24-29 at 160x160 when ``../shared/data`` is
there; and the memory that post-processing a batch of 8 full-size 1330x1330 images with 21
classes takes at most.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nets.unet import Unet as Model
from nets.unet_training import weights_init
from oracle.original import RefPredictor
from unet import Unet
from utils.device import cpu_has_native_bf16, cpu_info
from utils.errors import UserError
from utils.images import read_image
from utils.inference.pipeline import default_batching
from utils.inference.speed import engine_predictors, network_seconds

SHARED = Path(
    os.environ.get("UNET_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def interleaved_best(steps: list[Callable[[], object]], repeats: int) -> list[float]:
    """Seconds per call of each step: one warm-up call each, then ``repeats`` rounds that call
    every step once, keeping each step's best round. Alternating the steps lets them meet the
    same machine; the best round is the one least disturbed by the rest of it (as ``timeit``).
    A step that returns a number reports its own seconds (a timer with its own warm-up)."""
    for step in steps:
        step()
    best = [float("inf")] * len(steps)
    for _ in range(repeats):
        for k, step in enumerate(steps):
            start = time.perf_counter()
            reported = step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            best[k] = min(best[k], reported if isinstance(reported, float) else seconds)
    return best


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = cpu_info()[0] or platform.processor()
    return (f"{model}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}, "
            f"native bf16: {cpu_has_native_bf16()}")  # fmt: skip


def write_images(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` generated photos-like JPEGs (smooth colour fields) of ``size`` = (w, h)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)
        pixels = cv2.resize(coarse, size, interpolation=cv2.INTER_CUBIC)
        paths.append(folder / f"{i:03d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def evaluation_seconds(unet, reference, paths, out: Path, batch_size, num_workers):
    """Seconds per image of get_miou.py's prediction loop, the original's and ours: one timed
    pass over ``paths`` each, after a warm-up on the first two."""
    out.mkdir(parents=True, exist_ok=True)

    def original(paths):
        for path in paths:
            reference.get_miou_png(Image.open(path)).save(out / f"{path.stem}.png")

    def ours(paths):
        for result in unet.predict_files(paths, batch_size, num_workers):
            Image.fromarray(result.labels).save(out / f"{result.path.stem}.png")

    seconds = []
    for step in (original, ours):
        step(paths[:2])
        start = time.perf_counter()
        step(paths)
        seconds.append((time.perf_counter() - start) / len(paths))
    return seconds


def postprocess_peak_bytes(device: torch.device) -> int:
    """The most memory that post-processing a batch of 8 1330x1330 images with 21 classes holds
    above its (8, 21, 512, 512) input: measured in a fresh process on the CPU (the peak resident
    set, ``VmHWM``; ``ru_maxrss`` would carry this process's peak over into the child)."""
    if device.type == "cuda":
        return _postprocess_peak(device)
    probe = [sys.executable, "-m", "benchmarks.predict_speed", "--memory-probe"]
    result = subprocess.run(probe, capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    return int(result.stdout.split()[-1])


def _postprocess_peak(device: torch.device) -> int:
    from utils.inference.pipeline import Placement, class_map, resize_to_original

    probs = torch.empty(8, 21, 512, 512, device=device).uniform_()  # no temporary copies
    placement = Placement(1330, 1330, 0, 0, 512, 512)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _peak_resident_bytes()
    maps = [class_map(resize_to_original(p, placement)) for p in probs]
    assert len(maps) == 8
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - before
    return _peak_resident_bytes() - before


def _peak_resident_bytes() -> int:
    status = Path("/proc/self/status")
    if status.exists():
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS


def export_int8(fp32: Unet, tmp: Path, images: list[Path]) -> list[Path]:
    """The model's int8 export, calibrated on ``images`` (none, said so, where onnx or
    onnxruntime's quantization tools are missing)."""
    import contextlib
    import io

    from utils.inference.quantize import quantize_int8

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            fp32.convert_to_onnx(False, str(tmp / "fp32.onnx"))
            quantize_int8(tmp / "fp32.onnx", tmp / "int8.onnx", images[:8], fp32.input_shape)
    except UserError as error:
        print(f"int8 rows skipped: {error}")
        return []
    return [tmp / "int8.onnx"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flag = parser.add_argument
    flag("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    flag("--input-shape", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    flag("--num-classes", type=int, default=21)
    flag("--repeats", type=int, default=3, help="timed runs per row; best kept")
    flag("--eval-images", type=int, default=48, help="generated images to evaluate")
    flag("--eval-size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"),
         help="their size (default: 500 375)")  # fmt: skip
    flag("--data", type=Path, default=SHARED,
         help="the shared data folder, for street.jpg and the ISBI images (default: "
         "$UNET_SHARED_DATA or ../shared/data); absent: generated or skipped")  # fmt: skip
    flag("--batch-size", type=int, default=8, help="our evaluation's batch size")
    flag("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    flag("--engines", action=argparse.BooleanOptionalAction, default=True,
         help="also time onnxruntime and OpenVINO, fp32 and int8 (default: on)")  # fmt: skip
    flag("--memory-probe", action="store_true",
         help="only print the post-processing peak of 8 images, in bytes, and exit")  # fmt: skip
    args = parser.parse_args(argv)
    auto = args.device == "auto"
    args.device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if auto else args.device
    )
    return args


class Bench:
    """One run of the benchmark: the weights, the original's predictor around them, ours in
    each engine and precision, and the rows timed so far."""

    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args, self.tmp, self.device = args, tmp, args.device
        self.shape = tuple(args.input_shape)
        torch.manual_seed(0)
        net = Model(num_classes=args.num_classes)
        weights_init(net, "kaiming")
        self.weights = tmp / "weights.pth"
        torch.save(net.state_dict(), self.weights)
        street = args.data / "samples" / "street.jpg"
        if not street.is_file():
            street = write_images(tmp / "street", 1, (1330, 1330))[0]
        self.street = read_image(street)
        self.reference = RefPredictor(net, self.shape, self.device)
        self.paths = write_images(tmp / "eval", args.eval_images, tuple(args.eval_size))
        self.rows: list[tuple[str, float, float]] = []  # (name, ours ms, the original's ms)
        self.nchw = self.ours(precision="fp32", channels_last=False)
        self.fp32 = self.ours(precision="fp32")
        self.predictors = self.engines() if args.engines else {self.fp32.how(): self.fp32}

    def ours(self, **kwargs) -> Unet:
        given = {"num_classes": self.args.num_classes, "input_shape": list(self.shape)}
        return Unet(**{"model_path": str(self.weights), "device": self.device.type, **given,
                       **kwargs})  # fmt: skip

    def engines(self) -> dict[str, Unet]:
        """Ours in every engine and precision this machine runs, by their ``how()``."""
        int8 = export_int8(self.fp32, self.tmp, self.paths)
        found = engine_predictors(self.ours, self.fp32, str(self.weights), self.tmp, int8)
        return {unet.how(): unet for unet in found}

    def add(self, name: str, original: float, ours: float) -> None:
        self.rows.append((name, ours * 1e3, original * 1e3))

    def network(self) -> None:
        """Network + argmax at the input size, beside the original's ``get_FPS``."""
        timed = {self.nchw.how(): self.nchw, **self.predictors}
        seconds = interleaved_best(
            [lambda: self.reference.get_FPS(self.street, 1)]
            + [lambda u=u: network_seconds(u, self.street, 1) for u in timed.values()],
            self.args.repeats,
        )
        for name, ours in zip(timed, seconds[1:], strict=True):
            self.add(f"network + argmax, {name}", seconds[0], ours)

    def pipelines(self) -> None:
        """``get_miou_png`` and ``detect_image`` on street.jpg, each engine's beside the
        original's."""
        for method in ("get_miou_png", "detect_image"):
            steps = [lambda m=method: getattr(self.reference, m)(self.street)]
            steps += [lambda m=method, u=u: getattr(u, m)(self.street)
                      for u in self.predictors.values()]  # fmt: skip
            seconds = interleaved_best(steps, self.args.repeats)
            for name, ours in zip(self.predictors, seconds[1:], strict=True):
                self.add(f"{method} street.jpg, ours {name}", seconds[0], ours)

    def evaluations(self) -> None:
        """get_miou.py's loop over generated images: at --batch-size, at the device's
        defaults, and in each other engine; the ISBI held-out ids when they are there."""
        size = f"{self.args.eval_size[0]}x{self.args.eval_size[1]}"
        batchings = [(self.args.batch_size, self.args.num_workers), default_batching(self.device)]
        runs = [(self.fp32, b, w) for b, w in dict.fromkeys(batchings)]
        runs += [(u, *default_batching(u.runtime.device)) for u in self.predictors.values()
                 if u is not self.fp32]  # fmt: skip
        for unet, batch, workers in runs:
            original, ours = evaluation_seconds(unet, self.reference, self.paths, self.tmp / "pred",
                                                batch, workers)  # fmt: skip
            self.add(f"evaluation, {len(self.paths)} {size}, batch {batch}, {workers} workers, "
                     f"{unet.how()}", original, ours)  # fmt: skip
        isbi = self.args.data / "isbi2012_cells" / "Images"
        if isbi.is_dir():
            self.isbi(isbi)

    def isbi(self, images: Path) -> None:
        torch.manual_seed(0)
        small = Model(num_classes=2)
        weights_init(small, "kaiming")
        torch.save(small.state_dict(), self.tmp / "isbi.pth")
        unet = Unet(model_path=str(self.tmp / "isbi.pth"), num_classes=2, input_shape=[160, 160],
                    device=self.device.type)  # fmt: skip
        ids = [images / f"{i}.png" for i in range(24, 30)]
        batch, workers = default_batching(self.device)
        reference = RefPredictor(small, (160, 160), self.device)
        original, ours = evaluation_seconds(unet, reference, ids, self.tmp / "isbi_pred",
                                            batch, workers)  # fmt: skip
        self.add(f"evaluation, ISBI ids 24-29 at 160x160, batch {batch}, fp32", original, ours)


def report(bench: Bench, peak: int) -> dict:
    """Print the table and what it says; return the summary the GPU check reads."""
    args, device = bench.args, bench.device
    print(f"Prediction speed on {device.type}: {device_name(device)}; VGG UNet, "
          f"{args.num_classes} classes, {bench.shape[0]}x{bench.shape[1]} input, best of "
          f"{args.repeats}")  # fmt: skip
    print(f"{'what':<66} {'ours ms':>9} {'original ms':>12} {'speed-up':>9}")
    for name, ms, original_ms in bench.rows:
        print(f"{name:<66} {ms:>9.1f} {original_ms:>12.1f} {original_ms / ms:>8.2f}x")
    by_name = {name: ms for name, ms, _ in bench.rows}
    summary = {"device": device_name(device), "rows": bench.rows, "postprocess_peak_bytes": peak}
    network = [r for r in bench.rows if r[0].startswith("network + argmax")]
    fastest = min(network, key=lambda row: row[1])
    torch_fp32 = by_name[f"network + argmax, {bench.nchw.how()}"]
    detect = min((r for r in bench.rows if r[0].startswith("detect_image")), key=lambda r: r[1])
    lines = [
        f"fastest network: {fastest[0].split(', ', 1)[1]}, x{torch_fp32 / fastest[1]:.2f} torch "
        "fp32 NCHW",
        f"fastest detect_image: {detect[0].split('ours ')[1]}, x{detect[2] / detect[1]:.2f} the "
        "original's fp32 detect_image",
    ]
    summary.update(fastest_network=fastest[0], fastest_detect_image=detect[0])
    for line in lines:
        print(line)
    print(f"post-processing peak, 8 images of 1330x1330, 21 classes: {peak / 2**20:.0f} MiB "
          f"(one full-size probability map is {1330 * 1330 * 21 * 4 / 2**20:.0f} MiB)")  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_probe:
        print(_postprocess_peak(torch.device("cpu")))
        return
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args, Path(tmp))
        bench.network()
        bench.pipelines()
        bench.evaluations()
        peak = postprocess_peak_bytes(args.device)
    summary = report(bench, peak)
    if os.environ.get("PREDICT_SPEED_JSON"):
        Path(os.environ["PREDICT_SPEED_JSON"]).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
