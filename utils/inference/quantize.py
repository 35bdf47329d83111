"""Static int8 quantization of an fp32 ONNX export, calibrated on the user's own images.

    from utils.inference.quantize import quantize_int8
    info = quantize_int8("m.onnx", "m.int8.onnx", "VOCdevkit/VOC2007/JPEGImages", (512, 512))

onnxruntime's static quantization in the QDQ format with per-channel int8 weights. The
calibration images are prepared exactly as prediction prepares them. The int8 file keeps the
fp32 file's metadata and adds :data:`CALIBRATION_KEY`, how it was calibrated. Each default is
chosen on the evidence in docs/speed.md, "int8: the evidence for its options" (``python -m
benchmarks.int8_options``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from utils.data.datasets import IMAGE_EXTENSIONS, DatasetLayout, read_split
from utils.device import cpu_info
from utils.errors import UserError
from utils.images import cvtColor, read_image
from utils.inference.inputs import letterbox_input

#: The metadata key of the int8 file that says how it was calibrated (a JSON object).
CALIBRATION_KEY = "int8_calibration"
#: How many images calibrate when the user does not say (all of them when the folder has fewer).
DEFAULT_CALIBRATION_IMAGES = 100
#: onnxruntime's calibration methods, by the names the flags and the metadata use.
METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
#: MinMax: the other two scored the same held-out mIoU and took 1.3-2x the calibration time.
DEFAULT_METHOD = "minmax"
#: The activations' 8-bit type; the weights are always signed int8.
ACTIVATION_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}
#: uint8: the same accuracy as int8 activations, which ran 1.7-1.8x slower on an x86 CPU.
DEFAULT_ACTIVATION_TYPE = "uint8"
#: What stays fp32: "first" (the convolution that reads the image), "last" (the one that writes
#: the logits) or node names. Nothing: keeping either gained no accuracy and cost 2-5% of speed.
DEFAULT_KEEP_FP32: tuple[str, ...] = ()
#: Whether onnxruntime's ``quant_pre_process`` (shape inference, graph optimization) runs first.
#: On: it changes no int8 weight or scale of these exports (it turns Constant nodes into
#: initializers), but without it Percentile calibration fails on Resize's empty roi input.
DEFAULT_PREPROCESS = True
#: CPU flags of an 8-bit dot product that accumulates in 32 bits and so cannot saturate.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: What every int8 file is: QDQ nodes around int8 weights.
FORMAT = {"weight_type": "int8", "format": "QDQ"}
#: The first opset whose QuantizeLinear/DequantizeLinear take an axis (per-channel scales); the
#: fp32 export is opset 12, so quantizing converts a copy.
QDQ_OPSET = 13


def calibration_paths(folder: str | Path, count: int = DEFAULT_CALIBRATION_IMAGES) -> list[Path]:
    """``count`` images of ``folder``, or of the ids of a VOC split file
    (``VOCdevkit/VOC2007/ImageSets/Segmentation/train.txt``: the train images only), all when
    there are fewer: sorted by name and evenly spread, so one source always gives the same set.
    Files of a folder that are not images are passed over."""
    folder = Path(folder)
    if count < 1:
        raise UserError(f"--calibration-images must be at least 1, not {count}.")
    if folder.suffix == ".txt" and folder.is_file():
        layout = DatasetLayout.of(folder.resolve().parents[3])
        images = sorted(layout.image_files(read_split(layout.root, str(folder))))
    elif not folder.is_dir():
        raise UserError(
            f"--calibration-dir '{folder}' is not a folder; point it at a folder of your "
            "training images (not the ones you evaluate on), or at a train split file."
        )
    else:
        images = [
            path
            for path in sorted(folder.iterdir())
            if path.suffix.lower() in IMAGE_EXTENSIONS and _is_image(path)
        ]
    if not images:
        raise UserError(
            f"--calibration-dir '{folder}' holds no readable image "
            f"({', '.join(IMAGE_EXTENSIONS)}); point it at a folder of your training images."
        )
    if len(images) <= count:
        return images
    return [images[i * len(images) // count] for i in range(count)]


def _is_image(path: Path) -> bool:
    """Whether Pillow recognises the file as an image (reads its header only)."""
    try:
        with Image.open(path):
            return True
    except (OSError, ValueError):
        return False


class LetterboxCalibration:
    """onnxruntime's calibration input: the images one at a time, prepared as prediction
    prepares them (letterbox to ``input_shape``, ``/ 255``, float32 NCHW, batch 1).

    onnxruntime's ``CalibrationDataReader`` counts any class with ``get_next`` as a subclass (its
    ``__subclasshook__``), so this module imports without onnxruntime. ``set_range`` and ``len``
    let the calibration hold the activations of one image at a time, not of all of them.
    """

    def __init__(
        self, paths: Sequence[Path], input_shape: Sequence[int], input_name: str = "images"
    ):
        self.paths = list(paths)
        self.input_shape = (int(input_shape[0]), int(input_shape[1]))
        self.input_name = input_name
        self.rewind()

    def __len__(self) -> int:
        return len(self.paths)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self.paths))

    def rewind(self) -> None:
        self.set_range(0, len(self.paths))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        image = read_image(self.paths[self._next], missing="check --calibration-dir")
        self._next += 1
        data = letterbox_input(cvtColor(image), self.input_shape)[0].numpy()
        return {self.input_name: data[None].astype(np.float32) / 255}


def cpu_has_vnni(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU has an 8-bit dot product that cannot saturate (AVX512-VNNI, AVX-VNNI or
    AMX-INT8), from the flags in ``cpuinfo``; False where that file cannot be read."""
    flags = cpu_info(cpuinfo)[1]
    return any(flag in flags for flag in VNNI_FLAGS)


def default_reduce_range() -> bool:
    """7-bit weights where onnxruntime's u8 x s8 kernels can saturate: x86 CPUs without VNNI
    (and x86 CPUs whose flags cannot be read). ARM CPUs have no such kernels."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return False
    return not cpu_has_vnni()


def fp32_nodes(model, keep: Sequence[str]) -> list[str]:
    """The names of the nodes of ``model`` (an ``onnx.ModelProto``) that ``keep`` asks to leave
    in fp32: "first" (convolutions of the graph's input), "last" (convolutions writing its
    output) or node names."""
    graph = model.graph
    inputs, outputs = {i.name for i in graph.input}, {o.name for o in graph.output}
    names: list[str] = []
    for item in keep:
        if item == "first":
            found = [n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in inputs]
        elif item == "last":
            found = [n.name for n in graph.node if n.op_type == "Conv" and n.output[0] in outputs]
        else:
            found = [n.name for n in graph.node if n.name == item]
        if not found:
            raise UserError(
                f"nothing to keep in fp32 matches {item!r}; use 'first', 'last' or a node name "
                "of the model."
            )
        names += [name for name in found if name not in names]
    return names


def _quantization_tools():
    """onnx, onnxruntime and its quantization module, or the pip command that installs them."""
    try:
        import onnx
        import onnxruntime
        from onnxruntime import quantization
    except ImportError as error:
        raise UserError(
            "int8 export needs onnxruntime's quantization tools, which are not installed: "
            "pip install onnx onnxruntime."
        ) from error
    return onnx, onnxruntime, quantization


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration: str | Path | Sequence[Path],
    input_shape: Sequence[int],
    *,
    count: int = DEFAULT_CALIBRATION_IMAGES,
    method: str = DEFAULT_METHOD,
    reduce_range: bool | None = None,
    keep_fp32: Sequence[str] = DEFAULT_KEEP_FP32,
    activation_type: str = DEFAULT_ACTIVATION_TYPE,
    per_channel: bool = True,
    preprocess: bool = DEFAULT_PREPROCESS,
) -> dict:
    """Write the int8 (QDQ) version of ``fp32_path`` to ``int8_path``, calibrated on a folder of
    images (``count`` of them, see :func:`calibration_paths`) or on the given image paths.

    ``reduce_range`` None decides for this CPU (:func:`default_reduce_range`). Returns the
    calibration info stored under :data:`CALIBRATION_KEY` beside the fp32 file's metadata.
    """
    onnx, onnxruntime, quantization = _quantization_tools()
    _check_choice("calibration method", method, METHODS)
    _check_choice("activation type", activation_type, ACTIVATION_TYPES)
    paths, folder = _calibration_images(calibration, count)
    reduce_range = default_reduce_range() if reduce_range is None else reduce_range
    source = onnx.load(str(fp32_path))
    Path(int8_path).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="unet-int8-") as temporary:
        prepared = _prepare(onnx, quantization, source, Path(temporary), preprocess)
        model = onnx.load(str(prepared))
        kept = fp32_nodes(model, keep_fp32)
        reader = LetterboxCalibration(paths, input_shape, model.graph.input[0].name)
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram methods' progress chatter
            quantization.quantize_static(
                str(prepared),
                str(int8_path),
                reader,
                quant_format=quantization.QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=quantization.QuantType.QInt8,
                activation_type=getattr(quantization.QuantType, ACTIVATION_TYPES[activation_type]),
                calibrate_method=getattr(quantization.CalibrationMethod, METHODS[method]),
                nodes_to_exclude=kept,
                extra_options={"CalibStridedMinMax": 1},  # one image's activations at a time
            )
    info = {
        "method": method,
        "images": len(paths),
        "folder": folder,
        "reduce_range": reduce_range,
        "per_channel": per_channel,
        "activation_type": activation_type,
        **FORMAT,
        "fp32_nodes": kept,
        "preprocessed": preprocess,
        "onnxruntime": onnxruntime.__version__,
    }
    _write_metadata(onnx, int8_path, source, info)
    return info


def _calibration_images(
    calibration: str | Path | Sequence[Path], count: int
) -> tuple[list[Path], str]:
    """The images to calibrate on and the folder they come from."""
    if isinstance(calibration, (str, Path)):
        return calibration_paths(calibration, count), str(calibration)
    paths = [Path(path) for path in calibration]
    return paths, os.path.commonpath([str(path.parent) for path in paths])


def _check_choice(what: str, value: str, choices) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; use one of {', '.join(choices)}.")


def _prepare(onnx, quantization, source, folder: Path, preprocess: bool) -> Path:
    """The model to quantize, in ``folder``: the fp32 model at :data:`QDQ_OPSET`, and after
    onnxruntime's ``quant_pre_process`` when ``preprocess``."""
    prepared = folder / f"opset{QDQ_OPSET}.onnx"
    onnx.save(onnx.version_converter.convert_version(source, QDQ_OPSET), str(prepared))
    if not preprocess:
        return prepared
    optimized = folder / "preprocessed.onnx"
    quantization.quant_pre_process(str(prepared), str(optimized))
    return optimized


def _write_metadata(onnx, int8_path: str | Path, source, info: dict) -> None:
    """The int8 file's metadata: exactly the fp32 file's entries, then the calibration's."""
    model = onnx.load(str(int8_path))
    del model.metadata_props[:]
    for entry in source.metadata_props:
        model.metadata_props.add(key=entry.key, value=entry.value)
    model.metadata_props.add(key=CALIBRATION_KEY, value=json.dumps(info))
    onnx.save(model, str(int8_path))
