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
from utils.device import (
    cpu_has_native_bf16,
    cpu_info,
    gpu_has_native_bf16,
    prefers_channels_last,
)
from utils.errors import UserError
from utils.inference import default_batching
from utils.speed import network_seconds
from utils.utils import read_image

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


def half_precisions(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["bf16", "fp16"] if gpu_has_native_bf16() else ["fp16"]
    return ["bf16"] if cpu_has_native_bf16() else []


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
    from utils.inference import Placement, class_map, resize_to_original

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


def onnx_predictors(fp32: Unet, tmp: Path, images: list[Path], device) -> dict[str, Unet]:
    """The model in onnxruntime, fp32 and int8 (calibrated on ``images``), where onnxruntime
    can run on ``device``; none (said so) where it cannot."""
    import contextlib
    import io

    from utils.quantize import quantize_int8

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            fp32.convert_to_onnx(False, str(tmp / "fp32.onnx"))
            quantize_int8(tmp / "fp32.onnx", tmp / "int8.onnx", images[:8], fp32.input_shape)
        return {
            f"onnxruntime {p}": Unet(model_path=str(tmp / f"{p}.onnx"), device=device.type)
            for p in ("fp32", "int8")
        }
    except UserError as error:
        print(f"onnxruntime rows skipped: {error}")
        return {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--input-shape", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; best kept")
    parser.add_argument("--eval-images", type=int, default=48, help="generated images to evaluate")
    parser.add_argument("--eval-size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"),
                        help="their size (default: 500 375)")  # fmt: skip
    parser.add_argument("--data", type=Path, default=SHARED,
                        help="the shared data folder, for street.jpg and the ISBI images "
                        "(default: $UNET_SHARED_DATA or ../shared/data); absent: generated "
                        "or skipped")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, help="our evaluation's batch size")
    parser.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                        help="also time onnxruntime fp32 and int8 (default: on)")  # fmt: skip
    parser.add_argument(
        "--memory-probe",
        action="store_true",
        help="only print the post-processing peak of 8 images, in bytes, and exit",
    )
    args = parser.parse_args(argv)
    if args.memory_probe:
        print(_postprocess_peak(torch.device("cpu")))
        return
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else
        ("cpu" if args.device == "auto" else args.device)
    )  # fmt: skip
    shape = tuple(args.input_shape)
    rows: list[tuple[str, float, float]] = []  # (name, ours ms per image, the original's ms)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        net = Model(num_classes=args.num_classes)
        weights_init(net, "kaiming")
        weights = tmp / "weights.pth"
        torch.save(net.state_dict(), weights)
        street_path = args.data / "samples" / "street.jpg"
        if not street_path.is_file():
            street_path = write_images(tmp / "street", 1, (1330, 1330))[0]
        street = read_image(street_path)
        reference = RefPredictor(net, shape, device)

        def ours(precision: str = "fp32", channels_last: bool | None = None, **kw) -> Unet:
            return Unet(model_path=str(weights), num_classes=args.num_classes,
                        input_shape=list(shape), device=device.type, precision=precision,
                        channels_last=channels_last, **kw)  # fmt: skip

        def add(name, original, pipeline):
            rows.append((name, pipeline * 1e3, original * 1e3))

        half = half_precisions(device)
        rep = args.repeats
        settings = [("fp32", False), ("fp32", True)] + [(p, True) for p in half]
        unets = {f"{p}{' + channels_last' if cl else ''}": ours(p, cl) for p, cl in settings}
        fp32 = unets["fp32 + channels_last" if prefers_channels_last(device) else "fp32"]
        paths = write_images(tmp / "eval", args.eval_images, tuple(args.eval_size))
        engines = onnx_predictors(fp32, tmp, paths, device) if args.onnx else {}
        # network + argmax at the input size: get_FPS and network_seconds report one timed run
        timed = {**unets, **engines}
        fps = interleaved_best(
            [lambda: reference.get_FPS(street, 1)]
            + [lambda u=u: network_seconds(u, street, 1) for u in timed.values()],
            rep,
        )
        for name, seconds in zip(timed, fps[1:], strict=True):
            add(f"network + argmax, {name}", fps[0], seconds)
        chosen = {"fp32": fp32, **{p: unets[f"{p} + channels_last"] for p in half}, **engines}
        for method in ("get_miou_png", "detect_image"):
            seconds = interleaved_best(
                [lambda m=method: getattr(reference, m)(street)]
                + [lambda m=method, u=u: getattr(u, m)(street) for u in chosen.values()],
                rep,
            )
            for unet, ms in zip(chosen.values(), seconds[1:], strict=True):
                add(f"{method} street.jpg, ours {unet.how()}", seconds[0], ms)

        size = f"{args.eval_size[0]}x{args.eval_size[1]}"
        batchings = [(args.batch_size, args.num_workers), default_batching(device)]
        for batch, workers in dict.fromkeys(batchings):  # the defaults, when they differ
            original, seconds = evaluation_seconds(fp32, reference, paths, tmp / "pred",
                                                   batch, workers)  # fmt: skip
            add(f"evaluation, {len(paths)} {size}, batch {batch}, {workers} workers, fp32",
                original, seconds)  # fmt: skip
        for name, unet in engines.items():  # get_miou.py over a folder, on the CPU's defaults
            batch, workers = default_batching(unet.runtime.device)
            original, seconds = evaluation_seconds(unet, reference, paths, tmp / "pred",
                                                   batch, workers)  # fmt: skip
            add(f"evaluation, {len(paths)} {size}, batch {batch}, {workers} workers, {name}",
                original, seconds)  # fmt: skip
        isbi = args.data / "isbi2012_cells" / "Images"
        if isbi.is_dir():
            torch.manual_seed(0)
            small = Model(num_classes=2)
            weights_init(small, "kaiming")
            torch.save(small.state_dict(), tmp / "isbi.pth")
            unet = Unet(model_path=str(tmp / "isbi.pth"), num_classes=2, input_shape=[160, 160],
                        device=device.type)  # fmt: skip
            ids = [isbi / f"{i}.png" for i in range(24, 30)]
            batch, workers = default_batching(device)
            original, seconds = evaluation_seconds(
                unet, RefPredictor(small, (160, 160), device), ids, tmp / "isbi_pred",
                batch, workers,
            )  # fmt: skip
            add(f"evaluation, ISBI ids 24-29 at 160x160, batch {batch}, fp32", original, seconds)
        peak = postprocess_peak_bytes(device)

    print(f"Prediction speed on {device.type}: {device_name(device)}; VGG UNet, "
          f"{args.num_classes} classes, {shape[0]}x{shape[1]} input, best of {rep}")  # fmt: skip
    print(f"{'what':<62} {'ours ms':>9} {'original ms':>12} {'speed-up':>9}")
    for name, ms, original_ms in rows:
        print(f"{name:<62} {ms:>9.1f} {original_ms:>12.1f} {original_ms / ms:>8.2f}x")
    summary = {"device": device_name(device), "rows": rows, "postprocess_peak_bytes": peak}
    by_name = {name: ms for name, ms, _ in rows}
    ceiling_note = []
    if half:
        p = half[0]
        net_ms = by_name[f"network + argmax, {p} + channels_last"]
        ceiling = by_name["network + argmax, fp32"] / net_ms
        detect = next(
            r for r in rows if r[0].startswith(f"detect_image street.jpg, ours torch {p}")
        )
        miou = next(r for r in rows if r[0].startswith(f"get_miou_png street.jpg, ours torch {p}"))
        ceiling_note = [
            f"ceiling (network fp32 NCHW / {p} + channels_last): {ceiling:.2f}x",
            f"detect_image {p} speed-up over the original's fp32: {detect[2] / detect[1]:.2f}x "
            f"= {detect[2] / detect[1] / ceiling:.0%} of the ceiling",
            f"get_miou_png {p} / network {p}: {miou[1] / net_ms:.2f}x the network's time",
        ]
        summary.update(ceiling=ceiling)
        int8 = by_name.get("detect_image street.jpg, ours onnxruntime int8")
        if int8:  # on a CPU with native bf16, what int8 adds to it
            ceiling_note.append(f"detect_image onnxruntime int8 vs torch {p}: "
                                f"{detect[1] / int8:.2f}x")  # fmt: skip
    for line in ceiling_note:
        print(line)
    print(
        f"post-processing peak, 8 images of 1330x1330, 21 classes: {peak / 2**20:.0f} MiB "
        f"(one full-size probability map is {1330 * 1330 * 21 * 4 / 2**20:.0f} MiB)"
    )
    if os.environ.get("PREDICT_SPEED_JSON"):
        Path(os.environ["PREDICT_SPEED_JSON"]).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
