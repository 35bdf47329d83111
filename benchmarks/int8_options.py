"""The int8 options on evidence: one trained model quantized several ways, each against fp32.

    python -m benchmarks.int8_options --model-path logs/demo/last_epoch_weights.pth \
        --dataset-path demo_data/VOCdevkit
    python -m benchmarks.int8_options --model-path logs/isbi/last_epoch_weights.pth \
        --dataset-path ../shared/data/isbi2012_cells --train-split recipes/isbi2012/train.txt \
        --val-split recipes/isbi2012/val.txt

Each option set (:data:`OPTION_SETS`, one change from :data:`BASE` each) calibrates on up to
``--calibration-images`` images of the training split, copied into a temporary folder so that
no held-out image calibrates. Then the held-out split runs through ``Unet_ONNX`` at each
image's own size: mIoU of fp32 and int8 against the labels, and the share of pixels whose int8
label is the fp32 label. Speed is onnxruntime's network alone (``session.run``, batch 1) at the
model's input size and, for a VGG UNet, at 512x512 (the same weights exported at that size),
best of ``--repeats`` or more rounds that run fp32 and every int8 model in turn, so that all of
them meet the same machine. Last, the int8 models are emulated in torch with onnxruntime's
integer arithmetic, with and without the 16-bit saturation of CPUs without VNNI, which this
machine may not have. Prints markdown tables; ``--out`` keeps the models and ``results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import onnxruntime.quantization  # imported here, so that no row's time includes the import
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from unet import Unet, Unet_ONNX
from utils.data.datasets import (
    DatasetLayout,
    read_class_label,
    read_split,
)
from utils.device import cpu_info
from utils.images import read_image
from utils.inference.inputs import letterbox_input
from utils.inference.quantize import quantize_int8
from utils.utils_metrics import ConfusionMatrix

#: The reference row: every option explicit, so that changing a default changes no row.
BASE = {
    "method": "minmax",
    "reduce_range": False,
    "keep_fp32": (),
    "activation_type": "uint8",
    "preprocess": True,
    "per_channel": True,
}
#: Each row's one change from BASE.
OPTION_SETS = {
    "minmax": {},
    "percentile": {"method": "percentile"},
    "entropy": {"method": "entropy"},
    "reduce_range": {"reduce_range": True},
    "first conv fp32": {"keep_fp32": ("first",)},
    "last conv fp32": {"keep_fp32": ("last",)},
    "first + last fp32": {"keep_fp32": ("first", "last")},
    "int8 activations": {"activation_type": "int8"},
    "no pre-process": {"preprocess": False},
    "per-tensor weights": {"per_channel": False},
}
#: Each size's timing rounds last at least this long.
MIN_TIMING_SECONDS = 30
#: CPU flags that decide int8 and bf16 speed, reported with the figures.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flag = parser.add_argument
    flag("--model-path", type=Path, required=True, help="trained weights (settings beside them)")
    flag("--dataset-path", type=Path, required=True, help="the data set the model was trained on")
    flag("--dataset-format", choices=("voc", "medical"), help="default: the model's settings")
    flag("--train-split", default="train", help="calibration ids: a split name or a file")
    flag("--val-split", default="val", help="held-out ids to score: a split name or a file")
    flag("--calibration-images", type=int, default=100, help="at most this many (default: 100)")
    flag(
        "--options",
        nargs="+",
        choices=OPTION_SETS,
        default=list(OPTION_SETS),
        metavar="NAME",
        help=f"rows to run (default: all): {', '.join(repr(n) for n in OPTION_SETS)}",
    )
    flag("--repeats", type=int, default=10, help="timed rounds; the best is kept (default: 10)")
    flag("--large-size", type=int, default=512, help="the second timing size (VGG only; 0: none)")
    flag("--large-calibration-images", type=int, default=2, help="calibrate those models on")
    flag("--out", type=Path, help="keep the models and results.json here")
    return parser.parse_args(argv)


def cpu_description() -> str:
    """The CPU's model name and the flags that matter here, from /proc/cpuinfo."""
    name, flags = cpu_info()
    name = name or "unknown CPU"
    present = [f for f in CPU_FLAGS if f in flags]
    absent = [f for f in CPU_FLAGS if f not in flags]
    return f"{name}; has {' '.join(present) or '-'}; lacks {' '.join(absent) or '-'}"


def export_fp32(weights: Path, path: Path, input_shape: list[int] | None = None) -> None:
    """The predictor's own fp32 export (opset 12, metadata), unsimplified; quietly."""
    with contextlib.redirect_stdout(io.StringIO()):
        net = Unet(model_path=str(weights), device="cpu", input_shape=input_shape)
        net.convert_to_onnx(False, str(path))


def held_out(
    dataset: Path, split: str, fmt: str, num_classes: int
) -> list[tuple[Path, np.ndarray]]:
    """(image path, class label) of each held-out id."""
    layout = DatasetLayout.of(dataset, fmt)
    names = read_split(dataset, split, fmt)
    return [
        (image, read_class_label(label, num_classes, fmt))
        for image, label in zip(layout.image_files(names), layout.label_files(names), strict=True)
    ]


def copy_training_images(dataset: Path, split: str, fmt: str, folder: Path) -> Path:
    """The training split's images copied into ``folder``: what the user's --calibration-dir
    would hold."""
    layout = DatasetLayout.of(dataset, fmt)
    names = read_split(dataset, split, fmt)
    folder.mkdir(parents=True, exist_ok=True)
    for path in layout.image_files(names):
        shutil.copy2(path, folder / path.name)
    return folder


def predict(onnx_path: Path, samples: list) -> tuple[list[np.ndarray], ConfusionMatrix]:
    """Each held-out image's labels at its own size through Unet_ONNX, and their confusion
    matrix against the ground truth."""
    with contextlib.redirect_stdout(io.StringIO()):
        net = Unet_ONNX(onnx_path=str(onnx_path), device="cpu")
    matrix = ConfusionMatrix(net.num_classes)
    predictions = []
    for result, (_, label) in zip(net.predict_files([p for p, _ in samples]), samples, strict=True):
        matrix.update(label, result.labels)
        predictions.append(result.labels)
    return predictions, matrix


def agreement(ours: list[np.ndarray], theirs: list[np.ndarray]) -> float:
    """The share of all pixels labelled the same by both."""
    same = sum(int((a == b).sum()) for a, b in zip(ours, theirs, strict=True))
    return same / sum(a.size for a in ours)


def conv_params(int8_path: Path) -> dict[str, dict]:
    """Per torch module name, what a QDQ model's int8 convolution computes with: the u8 input's
    scale and zero point, the int8 weights and their per-channel scales, the int32 bias, and
    the scale and zero point its output is quantized to. Convolutions left fp32 are absent."""
    graph = onnx.load(str(int8_path)).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    quantizer = {node.input[0]: node for node in graph.node if node.op_type == "QuantizeLinear"}
    params = {}
    for conv in (node for node in graph.node if node.op_type == "Conv"):
        x, w, b = (producer.get(name) for name in conv.input)
        if w is None or w.op_type != "DequantizeLinear":
            continue
        y = quantizer.get(conv.output[0])
        params[w.input[0].removesuffix(".weight_quantized")] = {
            "x_scale": float(values[x.input[1]]),
            "x_zero": float(values[x.input[2]]),
            "weight": torch.from_numpy(values[w.input[0]].astype(np.float64)),
            "w_scale": torch.from_numpy(values[w.input[1]].astype(np.float64)),
            "bias": torch.from_numpy(values[b.input[0]].astype(np.float64)),
            "y_scale": float(values[y.input[1]]) if y else None,
            "y_zero": float(values[y.input[2]]) if y else None,
        }
    return params


def saturation_error(xq: torch.Tensor, weight: torch.Tensor, module, x_zero: float) -> torch.Tensor:
    """What vpmaddubsw's saturation adds to an int8 convolution's sums on a CPU without VNNI.

    onnxruntime's x86 kernels multiply u8 activations by s8 weights in pairs of neighbours
    along K (NHWC: kernel row, column, then channel) and clamp each pair's sum to int16 before
    widening; padding reads the zero point. Only pairs of same-sign weights with
    |w1| + |w2| > 128 can reach 32767, so only those are computed."""
    out_channels = weight.shape[0]
    flat = weight.float().permute(0, 2, 3, 1).reshape(out_channels, -1)
    flat = F.pad(flat, (0, flat.shape[1] % 2))
    w1, w2 = flat[:, 0::2], flat[:, 1::2]
    risky = ((w1 * w2) > 0) & ((w1.abs() + w2.abs()) > 128)
    pad = module.padding[1], module.padding[1], module.padding[0], module.padding[0]
    padded = F.pad(xq, pad, value=x_zero)
    columns = F.unfold(padded.float(), module.kernel_size, stride=module.stride)[0]  # (C*kh*kw, L)
    positions = columns.shape[-1]
    columns = columns.view(xq.shape[1], -1, positions).transpose(0, 1).reshape(-1, positions)
    columns = F.pad(columns, (0, 0, 0, columns.shape[0] % 2))
    error = torch.zeros(out_channels, positions)  # float32 holds these integer sums exactly
    rows, pairs = risky.nonzero(as_tuple=True)
    for start in range(0, len(rows), 1024):
        o, j = rows[start : start + 1024], pairs[start : start + 1024]
        sums = w1[o, j, None] * columns[2 * j] + w2[o, j, None] * columns[2 * j + 1]
        error.index_add_(0, o, sums.clamp(-32768, 32767) - sums)
    return error.double().view(out_channels, *_output_size(xq, module))


def _output_size(x: torch.Tensor, module) -> tuple[int, int]:
    return tuple(
        (x.shape[2 + i] + 2 * module.padding[i] - module.kernel_size[i]) // module.stride[i] + 1
        for i in range(2)
    )


def int8_conv(module, x: torch.Tensor, p: dict, saturate: bool, counts: list[int]) -> torch.Tensor:
    """One convolution as onnxruntime's int8 kernel computes it: the input rounded to u8, exact
    integer sums (with ``saturate``, vpmaddubsw's clamping added), the int32 bias, rescaled, and
    rounded to its output's u8 grid. ``counts`` gathers (outputs changed, outputs)."""
    xq = torch.clamp(torch.round(x.double() / p["x_scale"]) + p["x_zero"], 0, 255)
    sums = F.conv2d(xq - p["x_zero"], p["weight"], None, module.stride, module.padding)
    if saturate:
        error = torch.stack(
            [
                saturation_error(xq[i : i + 1], p["weight"], module, p["x_zero"])
                for i in range(len(xq))
            ]
        )
        counts[0] += int((error != 0).sum())
        sums = sums + error
    counts[1] += sums.numel()
    y = (sums + p["bias"].view(1, -1, 1, 1)) * (p["x_scale"] * p["w_scale"]).view(1, -1, 1, 1)
    if p["y_scale"] is not None:
        y = torch.clamp(torch.round(y / p["y_scale"]) + p["y_zero"], 0, 255)
        y = (y - p["y_zero"]) * p["y_scale"]
    return y.float()


@contextlib.contextmanager
def emulated_int8(net: torch.nn.Module, int8_path: Path, saturate: bool):
    """Run ``net``'s convolutions as the int8 model's (see :func:`int8_conv`) while inside;
    yields the (changed, total) output counts."""
    params, counts, handles = conv_params(int8_path), [0, 0], []
    for name, module in net.named_modules():
        if name in params:
            hook = functools.partial(
                _replace_output, p=params[name], saturate=saturate, counts=counts
            )
            handles.append(module.register_forward_hook(hook))
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def _replace_output(module, inputs, output, p, saturate, counts):
    return int8_conv(module, inputs[0], p, saturate, counts)


def emulate_avx2(args, samples: list, rows: dict, fp32_labels: list) -> list[str]:
    """mIoU and agreement of the int8 models emulated in torch, without and with vpmaddubsw's
    saturation: the first checks the emulation against onnxruntime on this CPU, the second is
    what a CPU without VNNI computes. Markdown table lines."""
    with contextlib.redirect_stdout(io.StringIO()):
        unet = Unet(model_path=str(args.model_path), device="cpu", precision="fp32")
    lines = [
        "| int8 model | emulated as | mIoU | labels = onnxruntime int8 here | labels = fp32 "
        "| int8 conv outputs saturated |",
        "| --- | --- |" + " ---: |" * 4,
    ]
    for name in ("minmax", "reduce_range"):
        if name not in rows:
            continue
        onnx_labels = predict(rows[name]["path"], samples)[0]
        for saturate in (False, True):
            with emulated_int8(unet.net, rows[name]["path"], saturate) as counts:
                labels = [unet.labels(read_image(path)) for path, _ in samples]
            matrix = ConfusionMatrix(unet.num_classes)
            for label, (_, truth) in zip(labels, samples, strict=True):
                matrix.update(truth, label)
            kind = "no VNNI (saturating)" if saturate else "VNNI (exact sums)"
            lines.append(
                f"| {name} | {kind} | {100 * matrix.miou:.2f} | "
                f"{100 * agreement(labels, onnx_labels):.2f}% | "
                f"{100 * agreement(labels, fp32_labels):.2f}% | "
                f"{100 * counts[0] / max(counts[1], 1):.4f}% |"
            )
    return lines


def interleaved_best(paths: list[Path], inputs: np.ndarray, repeats: int) -> list[float]:
    """Seconds per ``session.run`` of each model: a warm-up run each, then rounds that run every
    model once, keeping each model's best round: ``repeats`` rounds, or more where they take
    under MIN_TIMING_SECONDS (short runs are the ones a busy machine disturbs most)."""
    sessions = [
        onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in paths
    ]
    feed = {"images": inputs}
    start = time.perf_counter()
    for session in sessions:
        session.run(None, feed)
    warm_up = time.perf_counter() - start
    best = [float("inf")] * len(sessions)
    for _ in range(max(repeats, math.ceil(MIN_TIMING_SECONDS / warm_up))):
        for k, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feed)
            best[k] = min(best[k], time.perf_counter() - start)
    return best


def network_input(image: Path, size: list[int]) -> np.ndarray:
    """One image as prediction feeds it to the network at ``size``."""
    return letterbox_input(read_image(image), size)[0].numpy()[None].astype(np.float32) / 255


def wide_weight_share(path: Path) -> float:
    """The share of a QDQ model's int8 convolution weights outside [-64, 64]. Only these can
    saturate vpmaddubsw's 16-bit sums on a CPU without VNNI (255 * 64 * 2 < 32767): the test
    of onnxruntime's Avx2WeightS8ToU8Transformer."""
    graph = onnx.load(str(path)).graph
    conv_weights = {node.input[1] for node in graph.node if node.op_type == "Conv"}
    quantized = {
        node.input[0]
        for node in graph.node
        if node.op_type == "DequantizeLinear" and node.output[0] in conv_weights
    }
    arrays = [
        numpy_helper.to_array(tensor).astype(np.int32)
        for tensor in graph.initializer
        if tensor.name in quantized and tensor.data_type == onnx.TensorProto.INT8
    ]
    return sum(int((np.abs(a) > 64).sum()) for a in arrays) / max(sum(a.size for a in arrays), 1)


def row_options(name: str, method: str | None = None) -> dict:
    """quantize_int8's options of a row; ``method`` overrides its calibration method."""
    return {**BASE, **OPTION_SETS[name], **({"method": method} if method else {})}


def quantize_rows(
    fp32: Path,
    folder: Path,
    calibration: Path,
    shape: list[int],
    names: list[str],
    count: int,
    method: str | None = None,
) -> dict[str, dict]:
    """Each named row's int8 model in ``folder``, its calibration info, and the seconds it took:
    on the clock and of this process's CPU time (the fairer figure on a shared machine)."""
    rows = {}
    for name in names:
        options = row_options(name, method)
        path = folder / f"{name.replace(' ', '_').replace('+', 'and')}.onnx"
        start, cpu = time.perf_counter(), time.process_time()
        info = quantize_int8(fp32, path, calibration, shape, count=count, **options)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        rows[name] = {"path": path, "info": info, "seconds": seconds, "cpu_seconds": cpu}
        print(f"quantized {name!r} in {seconds:.1f} s ({cpu:.1f} s of CPU)", flush=True)
    return rows


def large_speed(args, calibration: Path, sample: Path, folder: Path) -> dict[str, tuple]:
    """(fp32, int8) network seconds of each row at ``--large-size``, from the same weights
    exported at that size, calibrated with MinMax on a few images: the calibration method
    changes no kernel, so the rows that differ only in it share one model."""
    size = [args.large_size, args.large_size]
    fp32 = folder / "fp32.onnx"
    export_fp32(args.model_path, fp32, size)

    def graph(name: str) -> str:
        return json.dumps(row_options(name, "minmax"), sort_keys=True)

    first = {graph(name): name for name in reversed(args.options)}
    rows = quantize_rows(
        fp32,
        folder,
        calibration,
        size,
        list(first.values()),
        args.large_calibration_images,
        method="minmax",
    )
    paths = [fp32] + [row["path"] for row in rows.values()]
    fp32_s, *int8_s = interleaved_best(paths, network_input(sample, size), args.repeats)
    by_row = dict(zip(rows, int8_s, strict=True))
    return {name: (fp32_s, by_row[first[graph(name)]]) for name in args.options}


def accuracy_table(rows: dict) -> str:
    """The markdown table of each row's calibration, file and held-out figures."""
    lines = [
        "| options | calibration s (CPU s) | int8 MB | fp32 mIoU | int8 mIoU | change "
        "| labels = fp32 | weights > ±64 |",
        "| --- |" + " ---: |" * 7,
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['seconds']:.1f} ({r['cpu_seconds']:.1f}) | {r['mb']:.1f} "
            f"| {100 * r['fp32_miou']:.2f} | {100 * r['int8_miou']:.2f} "
            f"| {100 * (r['int8_miou'] - r['fp32_miou']):+.2f} | {100 * r['agreement']:.2f}% "
            f"| {100 * r['wide']:.1f}% |"
        )
    return "\n".join(lines)


def speed_table(rows: dict, sizes: dict[str, str]) -> str:
    """The markdown table of each row's (fp32, int8) network seconds at each size, keyed by
    the rows' field that holds them."""
    head = "".join(
        f" fp32 ms {size} | int8 ms {size} | speed-up {size} |" for size in sizes.values()
    )
    lines = ["| options |" + head, "| --- |" + " ---: |" * 3 * len(sizes)]
    for name, r in rows.items():
        cells = "".join(
            f" {1000 * r[key][0]:.1f} | {1000 * r[key][1]:.1f} | {r[key][0] / r[key][1]:.2f}x |"
            for key in sizes
        )
        lines.append(f"| {name} |{cells}")
    return "\n".join(lines)


def score(rows: dict, samples: list, fp32_labels: list, fp32_miou: float) -> None:
    """Each row's held-out mIoU, agreement with fp32, file size and wide weights, in place."""
    for row in rows.values():
        labels, matrix = predict(row["path"], samples)
        row.update(
            fp32_miou=fp32_miou,
            int8_miou=matrix.miou,
            agreement=agreement(labels, fp32_labels),
            mb=row["path"].stat().st_size / 2**20,
            wide=wide_weight_share(row["path"]),
        )


def exported_settings(fp32: Path) -> dict:
    """The model's settings, from the metadata the fp32 export wrote (JSON values)."""
    return {entry.key: json.loads(entry.value) for entry in onnx.load(str(fp32)).metadata_props}


def time_rows(args, rows: dict, fp32: Path, sample: Path, calibration: Path) -> dict:
    """Each row's (fp32, int8) network seconds at the model's size and, for a VGG UNet, at
    ``--large-size``, in place; returns the rows' fields that hold them and their sizes."""
    settings = exported_settings(fp32)
    shape = settings["input_shape"]
    paths = [fp32] + [row["path"] for row in rows.values()]
    fp32_s, *int8_s = interleaved_best(paths, network_input(sample, shape), args.repeats)
    for row, seconds in zip(rows.values(), int8_s, strict=True):
        row["model_s"] = (fp32_s, seconds)
    sizes = {"model_s": f"{shape[0]}x{shape[1]}"}
    if args.large_size and settings["backbone"] == "vgg":
        for name, seconds in large_speed(args, calibration, sample, fp32.parent / "large").items():
            rows[name]["large_s"] = seconds
        sizes["large_s"] = f"{args.large_size}x{args.large_size}"
    return sizes


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    print(f"CPU: {cpu_description()}; onnxruntime {onnxruntime.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="int8-options-") as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = folder / "fp32.onnx"
        export_fp32(args.model_path, fp32)
        settings = exported_settings(fp32)
        fmt, shape = args.dataset_format or settings["dataset_format"], settings["input_shape"]
        samples = held_out(args.dataset_path, args.val_split, fmt, settings["num_classes"])
        calibration = copy_training_images(
            args.dataset_path, args.train_split, fmt, Path(tmp) / "calibration"
        )
        fp32_labels, fp32_matrix = predict(fp32, samples)
        rows = quantize_rows(
            fp32, folder, calibration, shape, args.options, args.calibration_images
        )
        score(rows, samples, fp32_labels, fp32_matrix.miou)
        sizes = time_rows(args, rows, fp32, samples[0][0], calibration)
        print(
            f"\n{len(samples)} held-out images; calibration on up to {args.calibration_images} "
            "of the training split's images:\n"
        )
        print(accuracy_table(rows))
        print(
            f"\nonnxruntime's network alone, ms per image at batch 1, best of {args.repeats} or "
            f"more rounds (at least {MIN_TIMING_SECONDS} s a size) that run fp32 and every int8 "
            "model in turn:\n"
        )
        print(speed_table(rows, sizes))
        print(
            "\nThe int8 models emulated in torch with onnxruntime's integer arithmetic, "
            "without and with vpmaddubsw's 16-bit saturation (CPUs without VNNI):\n"
        )
        print("\n".join(emulate_avx2(args, samples, rows, fp32_labels)))
        if args.out:
            for row in rows.values():
                row["path"] = str(row["path"])
            (args.out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
