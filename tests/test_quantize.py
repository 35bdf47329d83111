"""int8 export (utils/inference/quantize.py): QDQ with per-channel weights, calibrated on the
user's own images as prediction prepares them, the fp32 metadata kept, and its one-sentence
errors."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unet import Unet_ONNX
from utils.device import Runtime
from utils.errors import UserError
from utils.images import read_image
from utils.inference.inputs import letterbox_input
from utils.inference.quantize import (
    CALIBRATION_KEY,
    LetterboxCalibration,
    calibration_paths,
    cpu_has_vnni,
    default_reduce_range,
    fp32_nodes,
    quantize_int8,
)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

#: The held-out pixels whose int8 label must be the fp32 label, outside near-ties (below).
AGREEMENT = 0.99
#: A near-tie: fp32's two most likely classes within this much probability of each other.
NEAR_TIE = 0.1


def write_images(folder: Path, names: list[str], size=(40, 30)) -> Path:
    """Small seeded RGB images named ``names`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
    return folder


def redraw_head(source: Path, target: Path) -> Path:
    """``source`` with the convolution that writes the logits redrawn at random (seeded): the
    briefly trained model says background everywhere, nearly sure; this one draws every class,
    with boundaries where rounding can tip a label."""
    from onnx import numpy_helper

    model = onnx.load(str(source))
    head = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == head.input[1]:
            shape = numpy_helper.to_array(tensor).shape
            drawn = np.random.default_rng(0).normal(0, 0.5, shape).astype(np.float32)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(drawn, tensor.name))
    onnx.save(model, str(target))
    return target


@pytest.fixture(scope="module")
def calibration_dir(trained, tmp_path_factory) -> Path:
    """Copies of the trained model's training-split images: a user's --calibration-dir."""
    root = trained[0] / "VOC2007"
    folder = tmp_path_factory.mktemp("calibration")
    for name in (root / "ImageSets/Segmentation/train.txt").read_text().split():
        shutil.copy2(root / "JPEGImages" / f"{name}.jpg", folder)
    return folder


@pytest.fixture(scope="module")
def quantized(onnx_files, calibration_dir, tmp_path_factory) -> dict:
    """The static export with a redrawn head, quantized once with the defaults on 4 images:
    ``fp32`` and ``int8`` paths and the calibration ``info``."""
    folder = tmp_path_factory.mktemp("int8")
    fp32 = redraw_head(onnx_files / "static.onnx", folder / "busy.onnx")
    int8 = folder / "busy.int8.onnx"
    info = quantize_int8(fp32, int8, calibration_dir, (32, 32), count=4)
    return {"fp32": fp32, "int8": int8, "info": info}


def test_int8_file_has_qdq_nodes_and_per_channel_weight_scales(quantized):
    graph = onnx.load(str(quantized["int8"])).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    scales = {t.name: t for t in graph.initializer}
    conv_weights = {node.input[1] for node in graph.node if node.op_type == "Conv"}
    weight_scales = [
        scales[node.input[1]]
        for node in graph.node
        if node.op_type == "DequantizeLinear" and node.output[0] in conv_weights
    ]
    assert weight_scales, "no convolution reads dequantized weights"
    assert all(len(scale.dims) == 1 and scale.dims[0] > 1 for scale in weight_scales)


def test_int8_metadata_is_the_fp32_metadata_plus_how_it_was_calibrated(quantized, calibration_dir):
    fp32 = {p.key: p.value for p in onnx.load(str(quantized["fp32"])).metadata_props}
    int8 = {p.key: p.value for p in onnx.load(str(quantized["int8"])).metadata_props}
    calibration = json.loads(int8.pop(CALIBRATION_KEY))
    assert int8 == fp32
    assert calibration == quantized["info"]
    assert calibration["images"] == 4
    assert calibration["folder"] == str(calibration_dir)
    assert calibration["per_channel"] is True
    assert calibration["reduce_range"] is default_reduce_range()


def test_int8_labels_agree_with_fp32_outside_near_ties(quantized, trained):
    """Rounding activations to 8 bits moves every logit a little, so a label may flip where
    fp32's two best classes are within NEAR_TIE of each other; elsewhere it must not."""
    names = (trained[0] / "VOC2007/ImageSets/Segmentation/val.txt").read_text().split()
    images = [read_image(trained[0] / "VOC2007/JPEGImages" / f"{n}.jpg") for n in names]
    fp32 = Unet_ONNX(onnx_path=str(quantized["fp32"]), device="cpu")
    int8 = Unet_ONNX(onnx_path=str(quantized["int8"]), device="cpu")
    same = clear = 0
    for image in images:
        probs = fp32.probabilities(image)
        top2 = np.sort(probs, axis=-1)[..., -2:]
        sure = (top2[..., 1] - top2[..., 0]) > NEAR_TIE
        same += int((probs.argmax(-1) == int8.labels(image))[sure].sum())
        clear += int(sure.sum())
    assert clear > 0.5 * sum(image.width * image.height for image in images)
    assert same / clear >= AGREEMENT


def test_calibration_feeds_images_as_prediction_prepares_them(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader

    folder = write_images(tmp_path, ["a.png", "b.jpg"])
    reader = LetterboxCalibration(calibration_paths(folder), (32, 48))
    assert isinstance(reader, CalibrationDataReader)
    for name in ("a.png", "b.jpg"):
        data = letterbox_input(read_image(folder / name), (32, 48))[0][None]
        expected = Runtime(torch.device("cpu")).model_input(data).numpy()
        fed = reader.get_next()["images"]
        assert fed.dtype == np.float32 and fed.shape == (1, 3, 32, 48)
        np.testing.assert_array_equal(fed, expected)
    assert reader.get_next() is None


def test_calibration_images_are_sorted_and_evenly_spread(tmp_path):
    write_images(tmp_path, [f"{i:02d}.png" for i in range(10)])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    assert [p.name for p in calibration_paths(tmp_path, 3)] == ["00.png", "03.png", "06.png"]
    assert len(calibration_paths(tmp_path)) == 10


@pytest.mark.parametrize("case", ["missing", "no images"])
def test_unusable_calibration_folder_is_named_in_one_sentence(case, tmp_path):
    folder = tmp_path / "calibration"
    if case == "no images":
        folder.mkdir()
        (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError) as error:
        calibration_paths(folder)
    message = str(error.value)
    assert str(folder) in message and "--calibration-dir" in message
    assert "\n" not in message and message.endswith(".")


def test_missing_onnxruntime_gives_the_pip_command(monkeypatch, onnx_files, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    with pytest.raises(UserError, match="pip install onnx onnxruntime"):
        quantize_int8(onnx_files / "static.onnx", tmp_path / "int8.onnx", tmp_path, (32, 32))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fpu avx2 avx512_vnni", True), ("fpu avx2 avx512f", False), ("fpu avx2 avx_vnni", True)],
)
def test_cpu_has_vnni_reads_the_cpu_flags(flags, expected, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n")
    assert cpu_has_vnni(cpuinfo) is expected
    assert cpu_has_vnni(tmp_path / "absent") is False


@pytest.mark.parametrize(
    ("machine", "vnni", "expected"),
    [("x86_64", False, True), ("x86_64", True, False), ("aarch64", False, False)],
)
def test_reduce_range_only_where_u8s8_can_saturate(machine, vnni, expected, monkeypatch):
    monkeypatch.setattr("utils.inference.quantize.platform.machine", lambda: machine)
    monkeypatch.setattr("utils.inference.quantize.cpu_has_vnni", lambda: vnni)
    assert default_reduce_range() is expected


def test_fp32_nodes_finds_the_first_and_last_convolutions(onnx_files):
    model = onnx.load(str(onnx_files / "static.onnx"))
    first, last = fp32_nodes(model, ["first", "last"])
    nodes = {node.name: node for node in model.graph.node}
    assert nodes[first].op_type == nodes[last].op_type == "Conv"
    assert nodes[first].input[0] == model.graph.input[0].name
    assert nodes[last].output[0] == model.graph.output[0].name
    with pytest.raises(UserError, match="'no such node'"):
        fp32_nodes(model, ["no such node"])
