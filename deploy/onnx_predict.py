"""Segment images with an exported UNet on onnxruntime or OpenVINO alone: no torch, no code
from this repo.

    pip install onnxruntime numpy pillow        # or: pip install -r deploy/requirements.txt
    python onnx_predict.py street.jpg photos/ --model models.onnx --out results
    pip install openvino numpy pillow           # OpenVINO: faster on Intel CPUs, an IR too
    python onnx_predict.py photos/ --model models.onnx --out results --engine openvino

For each image it writes ``results/masks/<name>.png``, the 8-bit class indices at the image's
own size (what get_miou.py writes), and ``results/overlays/<name>.png``, the class colours
blended over the image (predict.py's mix_type 0). ``<name>`` is the image's stem, or its full
file name where two inputs share a stem. The input size, classes and tiles come from the
metadata ``predict.py --mode export_onnx`` writes; ``--input-shape`` and ``--num-classes`` give
or override them. The steps are utils/inference/pipeline.py's: letterbox (bicubic onto gray) ->
/255 -> model -> softmax -> crop the padding -> bilinear resize by pixel centres -> argmax.
"""

from __future__ import annotations

import argparse
import colorsys
import importlib
import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    import numpy as np
    from PIL import Image
except ImportError as missing:  # main() says what to install
    MISSING: str | None = str(missing).strip().splitlines()[0].rstrip(".")
else:
    MISSING = None

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
INSTALL = {
    "onnxruntime": "pip install -r deploy/requirements.txt (or pip install onnxruntime numpy "
    "pillow)",
    "openvino": "pip install openvino numpy pillow",
}


class UserError(Exception):
    """A mistake the user can fix; :func:`main` prints it as one sentence, exit code 2."""


@dataclass(frozen=True)
class Network:
    """A loaded model: the function that runs it on a (1, 3, H, W) float32 input, its input and
    output dimensions (None where free), and the settings our export stores (each value JSON)."""

    run: Callable[[np.ndarray], np.ndarray]
    inputs: list
    outputs: list
    metadata: dict[str, str]


@dataclass(frozen=True)
class Predictor:
    """A loaded model and the settings its pipeline needs."""

    network: Network
    input_shape: tuple[int, int]
    num_classes: int
    tile: int | None = None
    stride: int | None = None
    tta: bool = False


def first_line(error: Exception) -> str:
    """An exception's message cut to one clause, to quote inside a sentence."""
    return str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else repr(error)


def import_engine(name: str):
    """The engine's module, or one sentence saying how to install it."""
    try:
        if name == "openvino":
            # at every import openvino sends a usage event to Google Analytics from a forked
            # process, unless a consent file says no; blocked, it uses its silent stub
            sys.modules.setdefault("openvino_telemetry", None)
        return importlib.import_module(name)
    except ImportError as missing:
        reason = first_line(missing)
        message = f"this script needs {name}, numpy and pillow ({reason}); {INSTALL[name]}."
        raise UserError(message) from None


def check_model_file(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"model file '{path}' does not exist; give an exported .onnx with --model.")
    if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
        raise UserError(
            f"'{path}' is an OpenVINO model without its weights '{path.with_suffix('.bin')}'; "
            "copy the .bin beside it."
        )


def load_onnxruntime(path: Path) -> Network:
    """An ONNX model on onnxruntime's CUDA provider when it has one, else the CPU."""
    ort = import_engine("onnxruntime")
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as error:  # onnxruntime raises its own types for files it cannot load
        raise UserError(
            f"'{path}' is not an ONNX model onnxruntime can load ({first_line(error)}); export "
            "one with predict.py --mode export_onnx."
        ) from None
    name = session.get_inputs()[0].name
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # its failure is said by run_model, in one sentence
    return Network(
        lambda x: session.run(None, {name: x}, quiet)[0],
        [static(size) for size in session.get_inputs()[0].shape],
        [static(size) for size in session.get_outputs()[0].shape],
        dict(session.get_modelmeta().custom_metadata_map),
    )


def load_openvino(path: Path) -> Network:
    """An ONNX model or an OpenVINO IR (.xml and .bin) on OpenVINO's CPU plugin, in its
    defaults (bf16 where the CPU has it natively)."""
    ov = import_engine("openvino")
    core = ov.Core()
    try:
        model = core.read_model(str(path))
        compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    except Exception as error:  # OpenVINO raises its own types
        raise UserError(
            f"'{path}' is not a model OpenVINO can load ({first_line(error)}); export one with "
            "predict.py --mode export_onnx."
        ) from None
    request = compiled.create_infer_request()
    info = model.get_rt_info()
    metadata = {}
    if "framework" in info:  # an ONNX export's metadata, kept in an IR saved from it
        metadata = {key: value.astype(str) for key, value in info["framework"].items()}

    def run(x: np.ndarray) -> np.ndarray:
        # in OpenVINO's threads (see utils/inference/openvino_engine.py)
        request.start_async({0: x})
        request.wait()
        return request.get_output_tensor(0).data.copy()

    def dims(port) -> list:
        return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]

    return Network(run, dims(model.inputs[0]), dims(model.outputs[0]), metadata)


LOADERS = {"onnxruntime": load_onnxruntime, "openvino": load_openvino}


def read_metadata(network: Network, path: Path) -> dict:
    """The settings our export stores (each value JSON); other keys are left out."""
    known = ("num_classes", "input_shape", "tile", "stride")
    try:
        return {key: json.loads(value) for key, value in network.metadata.items() if key in known}
    except ValueError:
        raise UserError(
            f"'{path}' has settings in its metadata that are not JSON; re-export it with "
            "predict.py --mode export_onnx."
        ) from None


def static(size) -> int | None:
    """A graph dimension that is fixed, or None where it is a name (dynamic)."""
    return size if isinstance(size, int) and size > 0 else None


def build_predictor(
    path: Path,
    input_shape: list[int] | None = None,
    num_classes: int | None = None,
    tta: bool = False,
    engine: str = "onnxruntime",
) -> Predictor:
    """The predictor of a model file in ``engine``: settings from the flags, else its metadata,
    else its static input and output shapes."""
    check_model_file(path)
    network = LOADERS[engine](path)
    metadata = read_metadata(network, path)
    graph = network.inputs[2:4]
    graph_shape = graph if len(graph) == 2 and None not in graph else None
    graph_classes = network.outputs[1]
    shape = input_shape or metadata.get("input_shape") or graph_shape
    classes = num_classes or metadata.get("num_classes") or graph_classes
    needed = [
        flag
        for flag, value in (("--input-shape H W", shape), ("--num-classes N", classes))
        if value is None
    ]
    if needed:
        raise UserError(
            f"'{path}' has no settings from our export and a dynamic "
            f"{'input' if shape is None else 'output'}; give {' and '.join(needed)} (the values "
            "the model was trained with)."
        )
    if graph_shape and list(shape) != graph_shape:
        raise UserError(
            f"'{path}' takes {graph_shape[0]}x{graph_shape[1]} inputs but --input-shape is "
            f"{shape[0]} {shape[1]}; drop --input-shape or give {graph_shape[0]} {graph_shape[1]}."
        )
    if graph_classes and classes != graph_classes:
        raise UserError(
            f"'{path}' predicts {graph_classes} classes but --num-classes is {classes}; drop "
            f"--num-classes or give {graph_classes}."
        )
    tile = metadata.get("tile")
    stride = metadata.get("stride") or (max(tile // 2, 1) if tile else None)
    return Predictor(network, (int(shape[0]), int(shape[1])), int(classes), tile, stride, tta)


def letterbox(image: Image.Image, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """An RGB image resized bicubic into ``size`` = (height, width), centred on gray, as an
    (H, W, 3) uint8 array; and the (top, left, height, width) box the image fills."""
    h, w = size
    scale = min(w / image.width, h / image.height)
    nw, nh = int(image.width * scale), int(image.height * scale)
    canvas = Image.new("RGB", (w, h), (128, 128, 128))
    canvas.paste(image.resize((nw, nh), Image.BICUBIC), ((w - nw) // 2, (h - nh) // 2))
    return np.asarray(canvas), ((h - nh) // 2, (w - nw) // 2, nh, nw)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the classes (axis 0), in float32."""
    exp = np.exp(logits - logits.max(axis=0, keepdims=True))
    return exp / exp.sum(axis=0, keepdims=True)


def run_model(predictor: Predictor, x: np.ndarray) -> np.ndarray:
    """The (C, H, W) float32 logits of a (1, 3, H, W) float32 input."""
    try:
        logits = predictor.network.run(x)
    except Exception as error:  # the engine's own types; a wrong --input-shape ends here
        raise UserError(
            f"the model fails on a {x.shape[2]}x{x.shape[3]} input ({first_line(error)}); give "
            "the --input-shape it was trained with."
        ) from None
    if logits.shape[1] != predictor.num_classes:
        raise UserError(
            f"the model predicts {logits.shape[1]} classes but --num-classes is "
            f"{predictor.num_classes}; give --num-classes {logits.shape[1]}."
        )
    return logits[0].astype(np.float32, copy=False)


def network_probabilities(predictor: Predictor, data: np.ndarray) -> np.ndarray:
    """(C, H, W) probabilities of an (H, W, 3) uint8 input; with TTA, the average with those
    of the mirrored input, mirrored back."""
    x = np.ascontiguousarray(data.transpose(2, 0, 1)[None]).astype(np.float32) / 255
    probs = softmax(run_model(predictor, x))
    if predictor.tta:
        mirrored = softmax(run_model(predictor, np.ascontiguousarray(x[..., ::-1])))
        probs = (probs + mirrored[..., ::-1]) / 2
    return probs


def source_pixels(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output pixel along one axis: its two input pixels and the second's weight, by
    pixel centres (torch's ``align_corners=False``, cv2's INTER_LINEAR), in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    source = np.maximum(source, np.float32(0))
    low = source.astype(np.int64)
    return low, np.minimum(low + 1, in_size - 1), np.clip(source - low, 0, 1).astype(np.float32)


def resize_bilinear(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, h, w) float32 maps resized bilinear, without antialias, to (C, height, width):
    along the columns, then the rows, as torch's ``F.interpolate`` weighs them."""
    left, right, wx = source_pixels(width, probs.shape[2])
    top, bottom, wy = source_pixels(height, probs.shape[1])
    widened = probs[:, :, left] * (1 - wx) + probs[:, :, right] * wx
    return widened[:, top] * (1 - wy)[:, None] + widened[:, bottom] * wy[:, None]


def window_probabilities(predictor: Predictor, image: Image.Image) -> np.ndarray:
    """(C, H, W) probabilities of an RGB image (or window) at its own size."""
    data, (top, left, nh, nw) = letterbox(image, predictor.input_shape)
    probs = network_probabilities(predictor, data)[:, top : top + nh, left : left + nw]
    return resize_bilinear(probs, image.height, image.width)


def window_starts(size: int, tile: int, stride: int) -> list[int]:
    """Window offsets covering ``size``; the last window is aligned to the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def image_probabilities(predictor: Predictor, image: Image.Image) -> np.ndarray:
    """(C, H, W) probabilities of an RGB image; with tiles, the average over the overlapping
    ``tile`` x ``tile`` windows."""
    tile, stride = predictor.tile, predictor.stride
    if not tile:
        return window_probabilities(predictor, image)
    total = np.zeros((predictor.num_classes, image.height, image.width), np.float32)
    counts = np.zeros((1, image.height, image.width), np.float32)
    for top in window_starts(image.height, tile, stride):
        for left in window_starts(image.width, tile, stride):
            bottom, right = min(top + tile, image.height), min(left + tile, image.width)
            total[:, top:bottom, left:right] += window_probabilities(
                predictor, image.crop((left, top, right, bottom))
            )
            counts[:, top:bottom, left:right] += 1
    return total / counts


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """The original's palette: VOC colours up to 21 classes, evenly spaced hues beyond."""
    if num_classes > 21:
        hues = [colorsys.hsv_to_rgb(x / num_classes, 1.0, 1.0) for x in range(num_classes)]
        return [(int(r * 255), int(g * 255), int(b * 255)) for r, g, b in hues]
    colors = []
    for index in range(num_classes):  # the PASCAL VOC colour map
        rgb, bits = [0, 0, 0], index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
        colors.append(tuple(rgb))
    return colors


def overlay(image: Image.Image, labels: np.ndarray, colors: list) -> Image.Image:
    """The class colours blended over the image, 0.7 colour (values past the palette: white)."""
    table = np.full((256, 3), 255, dtype=np.uint8)
    table[: len(colors)] = colors
    return Image.blend(image, Image.fromarray(table[labels]), 0.7)


def read_image(path: Path) -> Image.Image:
    """Open and fully decode an image (so truncation shows here), converted to RGB."""
    try:
        image = Image.open(path)
        image.load()
    except (OSError, Image.DecompressionBombError) as error:
        raise UserError(f"'{path}' cannot be read as an image ({first_line(error)})") from None
    return image if image.mode == "RGB" else image.convert("RGB")


def collect_images(inputs: list[str]) -> list[Path]:
    """The image files named, and those in the folders named (sorted), each once."""
    paths, seen = [], set()
    for path in map(Path, inputs):
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            if not found:
                raise UserError(
                    f"folder '{path}' holds no images ({' '.join(IMAGE_SUFFIXES)}); put images "
                    "there or name image files."
                )
        elif path.is_file():
            found = [path]
        else:
            raise UserError(f"input '{path}' does not exist; give image files or folders.")
        paths += [p for p in found if p.resolve() not in seen]  # named twice: segmented once
        seen.update(p.resolve() for p in found)
    return paths


def output_names(paths: list[Path]) -> list[str]:
    """A distinct output file name per image: its stem, its full name where stems collide
    (a.jpg, a.png -> a.jpg.png, a.png.png), numbered where even those collide."""
    stems = Counter(path.stem.lower() for path in paths)
    taken, names = set(), []
    for path in paths:
        base = path.stem if stems[path.stem.lower()] == 1 else path.name
        name, number = base, 1
        while name.lower() in taken:
            number += 1
            name = f"{base}-{number}"
        taken.add(name.lower())
        names.append(f"{name}.png")
    return names


def save_results(
    image: Image.Image, labels: np.ndarray, colors: list, out: Path, name: str
) -> None:
    """Write ``masks/<name>`` and ``overlays/<name>`` under ``out``."""
    try:
        for kind, picture in (
            ("masks", Image.fromarray(labels)),
            ("overlays", overlay(image, labels, colors)),
        ):
            (out / kind).mkdir(parents=True, exist_ok=True)
            picture.save(out / kind / name)
    except OSError as error:
        reason = first_line(error)
        raise UserError(f"cannot write into '{out}' ({reason}); pick another --out.") from None


def segment_all(predictor: Predictor, paths: list[Path], out: Path) -> int:
    """Segment each image into ``out``, skipping those that cannot be read; how many were."""
    colors = class_colors(predictor.num_classes)
    written = 0
    names = output_names(paths)  # one per path; zip(strict=) would need Python 3.10
    for number, (path, name) in enumerate(zip(paths, names), 1):  # noqa: B905
        try:
            image = read_image(path)
        except UserError as error:
            print(f"warning: skipped {error}.", file=sys.stderr)
            continue
        labels = image_probabilities(predictor, image).argmax(axis=0).astype(np.uint8)
        save_results(image, labels, colors, out, name)
        written += 1
        print(f"[{number}/{len(paths)}] {path} -> {name}")
    return written


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="images or folders")
    parser.add_argument("--model", required=True, type=Path, help="the exported .onnx file")
    parser.add_argument("--out", required=True, type=Path, help="where masks/ and overlays/ go")
    parser.add_argument(
        "--input-shape",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="the network's input size (default: from the model)",
    )
    parser.add_argument("--num-classes", type=int, help="classes (default: from the model)")
    parser.add_argument("--tta", action="store_true", help="average with the mirrored image")
    parser.add_argument(
        "--engine",
        choices=list(LOADERS),
        default="onnxruntime",
        help="what runs the model: onnxruntime (.onnx), or OpenVINO (.onnx, or its .xml + .bin; "
        "faster on Intel CPUs) (default: onnxruntime)",
    )
    return parser


def run(args: argparse.Namespace) -> None:
    """Check the flags, load the model, segment every image and say what was written."""
    if MISSING:
        raise UserError(
            f"this script needs {args.engine}, numpy and pillow ({MISSING}); "
            f"{INSTALL[args.engine]}."
        )
    import_engine(args.engine)  # a missing package first: nothing else can be done without it
    if args.input_shape and min(args.input_shape) < 1:
        raise UserError(f"--input-shape must be positive, not {args.input_shape}.")
    if args.num_classes is not None and not 1 <= args.num_classes <= 256:
        raise UserError(f"--num-classes must be 1 to 256 (8-bit masks), not {args.num_classes}.")
    paths = collect_images(args.inputs)
    predictor = build_predictor(
        args.model, args.input_shape, args.num_classes, args.tta, args.engine
    )
    (h, w), tile = predictor.input_shape, predictor.tile
    print(
        f"{args.model}: {predictor.num_classes} classes, {h}x{w} input"
        f"{f', {tile}px tiles' if tile else ''}; {len(paths)} image(s)."
    )
    written = segment_all(predictor, paths, args.out)
    if not written:
        raise UserError(f"none of the {len(paths)} image(s) could be read; see the warnings.")
    skipped = f" ({len(paths) - written} skipped)" if written < len(paths) else ""
    print(
        f"wrote {written} masks to {args.out / 'masks'} and {written} overlays to "
        f"{args.out / 'overlays'}{skipped}."
    )


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    try:
        run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
