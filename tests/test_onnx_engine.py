"""One predictor, two engines: every mode of predict.py and get_miou.py runs an ONNX model in
onnxruntime through the same pipeline as the weights in torch, and says what is wrong in one
sentence when it cannot. onnxruntime and torch sum in another order, so labels are compared
outside near-ties (tests/numerics.py)."""

import json
import re
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

import get_miou
import predict
from tests.conftest import save_random_weights, write_video
from tests.numerics import assert_labels_agree
from unet import Unet
from utils.data.classes import class_colors
from utils.data.demo_data import make_demo_dataset
from utils.settings.model import ModelSettings, write_settings_file

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

NAMES = ("bg", "square", "circle", "triangle")


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    """Random-weight 4-class weights (busy maps, many class borders) with a settings file, and
    their export: ``busy.pth`` and ``busy.onnx``."""
    folder = tmp_path_factory.mktemp("busy")
    weights = save_random_weights(folder / "busy.pth", num_classes=4)
    write_settings_file(weights, ModelSettings(num_classes=4, input_shape=(32, 32),
                                               name_classes=NAMES))  # fmt: skip
    predict.main(["--mode", "export_onnx", "--model-path", str(weights), "--device", "cpu",
                  "--onnx-save-path", str(folder / "busy.onnx")])  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Three smooth pictures of mixed sizes and modes."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(5)
    for name, (width, height), mode in (("a.jpg", (48, 40), "RGB"), ("b.png", (30, 52), "L"),
                                        ("c.png", (64, 64), "RGB")):  # fmt: skip
        coarse = rng.integers(0, 255, (5, 6, 3), dtype=np.uint8)
        pixels = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        Image.fromarray(pixels).convert(mode).save(folder / name)
    return folder


def torch_predictor(busy) -> Unet:
    return Unet(model_path=str(busy / "busy.pth"), device="cpu")


def drawn_labels(path) -> np.ndarray:
    """The class map of a --mix-type 1 drawing, from its class colours."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    colors = np.array(class_colors(4), dtype=np.uint8)
    return (pixels[:, :, None, :] == colors[None, None]).all(axis=-1).argmax(axis=-1)


def test_the_predictor_runs_an_onnx_model_by_its_suffix_with_its_settings(busy, pictures):
    onnx_unet = Unet(model_path=str(busy / "busy.onnx"), device="cpu")
    assert onnx_unet.engine.name == "onnxruntime" and onnx_unet.net is None
    assert onnx_unet.class_names() == list(NAMES) and onnx_unet.input_shape == [32, 32]
    reference = torch_predictor(busy)
    image = Image.open(pictures / "a.jpg")
    labels = onnx_unet.labels(image)
    assert len(np.unique(labels)) > 1, "a one-class map tests nothing"
    assert_labels_agree(labels, reference.labels(image), reference.probabilities(image))
    assert_labels_agree(
        np.array(onnx_unet.get_miou_png(image)), labels, onnx_unet.probabilities(image)
    )
    assert onnx_unet.get_FPS(image, 1) > 0


@pytest.mark.parametrize("mode", ["predict", "dir_predict"])
def test_predict_and_dir_predict_draw_with_an_onnx_model_what_torch_draws(
    mode, busy, pictures, tmp_path, cli
):
    reference = torch_predictor(busy)
    for engine, model in (("torch", "busy.pth"), ("onnx", "busy.onnx")):
        where = ["--dir-origin-path", str(pictures)] if mode == "dir_predict" else [
            str(path) for path in sorted(pictures.iterdir())]  # fmt: skip
        argv = ["--mode", mode, *where, "--model-path", str(busy / model), "--mix-type", "1",
                "--device", "cpu", "--dir-save-path", str(tmp_path / engine)]  # fmt: skip
        code, _, err = cli(predict.main, argv)
        assert code == 0, err
    for path in sorted(pictures.iterdir()):
        ours = drawn_labels(tmp_path / f"onnx/{path.stem}.png")
        theirs = drawn_labels(tmp_path / f"torch/{path.stem}.png")
        assert_labels_agree(ours, theirs, reference.probabilities(Image.open(path)))


def test_video_runs_an_onnx_model_frame_by_frame(busy, tmp_path, cli):
    clip = write_video(tmp_path / "clip.avi", 4)
    argv = ["--mode", "video", "--video-path", str(clip), "--video-save-path",
            str(tmp_path / "out.avi"), "--batch-size", "2", "--model-path",
            str(busy / "busy.onnx"), "--device", "cpu"]  # fmt: skip
    code, out, err = cli(predict.main, argv)
    assert code == 0 and "Saved 4 frames" in out, err
    assert int(cv2.VideoCapture(str(tmp_path / "out.avi")).get(cv2.CAP_PROP_FRAME_COUNT)) == 4


def test_predict_onnx_and_onnx_path_keep_the_originals_names(busy, pictures, tmp_path, cli):
    argv = [
        str(pictures / "a.jpg"),
        "--mode",
        "predict_onnx",
        "--onnx-path",
        str(busy / "busy.onnx"),
        "--device",
        "cpu",
        "--dir-save-path",
        str(tmp_path),
    ]
    code, out, err = cli(predict.main, argv)
    assert code == 0 and "on cpu: onnxruntime fp32" in out, err
    assert (tmp_path / "a.png").is_file()


def test_get_miou_scores_an_onnx_model_as_it_scores_the_weights(busy, tmp_path, cli):
    root = make_demo_dataset(tmp_path / "VOCdevkit", 6, size=(40, 28))
    runs = {}
    for engine, model in (("torch", "busy.pth"), ("onnx", "busy.onnx")):
        out = tmp_path / engine
        argv = ["--dataset-path", str(root), "--split", "trainval", "--model-path",
                str(busy / model), "--device", "cpu", "--miou-out-path", str(out)]  # fmt: skip
        code, _, err = cli(get_miou.main, argv)
        assert code == 0, err
        runs[engine] = json.loads((out / "metrics.json").read_text())
    assert list(runs["onnx"]["per_class"]) == list(NAMES)
    reference, moved = torch_predictor(busy), 0
    for path in sorted((root / "VOC2007/JPEGImages").iterdir()):
        ours, theirs = (np.array(Image.open(tmp_path / f"{e}/detection-results/{path.stem}.png"))
                        for e in ("onnx", "torch"))  # fmt: skip
        moved += assert_labels_agree(ours, theirs, reference.probabilities(Image.open(path)))
    # a moved pixel changes a figure by about 1 / (the pixels of a class): under 1e-3 here
    assert abs(runs["onnx"]["mIoU"] - runs["torch"]["mIoU"]) <= 1e-3 + moved * 1e-3


def without_metadata(source, target):
    model = onnx.load(str(source))
    del model.metadata_props[:]
    onnx.save(model, str(target))
    return target


def test_an_export_without_settings_and_a_free_size_asks_for_them(busy, tmp_path, cli):
    dynamic = tmp_path / "dynamic.onnx"
    predict.main(["--mode", "export_onnx", "--model-path", str(busy / "busy.pth"), "--dynamic",
                  "--device", "cpu", "--onnx-save-path", str(dynamic)])  # fmt: skip
    bare = without_metadata(dynamic, tmp_path / "bare.onnx")  # the original's own export is static
    code, _, err = cli(predict.main, ["--mode", "fps", "--model-path", str(bare)])
    assert code == 2 and "has no settings in its metadata" in err
    assert "give --input-shape H W" in err and "Traceback" not in err
    unet = Unet(model_path=str(bare), input_shape=[64, 64], device="cpu")
    assert unet.num_classes == 4 and unet.class_names()[1] == "class_1"  # the graph's 4 outputs


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--mode", "export_onnx", "--int8"], "--int8 calibrates on your own images: give "
      "--calibration-dir"),
     (["--int8"], "--int8 is for --mode export_onnx"),
     (["--model-path", "x.onnx", "--engine", "torch"], "--engine torch opens .pth files, and "
      "'x.onnx' is not one (--engine onnxruntime or openvino can)"),
     (["--model-path", "x.pth", "--engine", "onnxruntime"], "--engine onnxruntime opens .onnx "
      "files, and 'x.pth' is not one (--engine torch or openvino can); export it first"),
     (["--model-path", "missing.onnx"], "'missing.onnx' does not exist; export one"),
     (["--model-path", "x.onnx", "--precision", "bf16"], "--precision bf16 is not how 'x.onnx' "
      "runs in onnxruntime: as it was exported (fp32)"),
     (["--model-path", "x.onnx", "--device", "cuda:x"], "unknown device 'cuda:x'; use auto, "
      "cpu, cuda or cuda:N")],
)  # fmt: skip
def test_each_wrong_engine_flag_is_one_sentence(argv, message, busy, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(busy)
    (busy / "x.onnx").write_bytes((busy / "busy.onnx").read_bytes())
    code, _, err = cli(predict.main, argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_without_onnxruntime_the_onnx_engine_gives_the_pip_command(busy, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    code, _, err = cli(predict.main, ["--model-path", str(busy / "busy.onnx")])
    assert code == 2 and "needs onnxruntime: pip install onnxruntime" in err


@pytest.mark.slow  # a VGG quantized (tests/test_quantize.py quantizes one in the fast set)
def test_int8_export_calibrates_on_the_folder_keeps_the_settings_and_scores_against_fp32(
    busy, tmp_path, cli
):
    root = make_demo_dataset(tmp_path / "VOCdevkit", 6, size=(40, 28))
    out = tmp_path / "int8.onnx"
    argv = ["--mode", "export_onnx", "--model-path", str(busy / "busy.pth"), "--onnx-save-path",
            str(out), "--int8", "--calibration-dir", str(root / "VOC2007/JPEGImages"),
            "--calibration-images", "4", "--reduce-range", "--dataset-path", str(root),
            "--split", "trainval", "--device", "cpu"]  # fmt: skip
    code, stdout, err = cli(predict.main, argv)
    assert code == 0, err
    assert f"int8 model saved as {out}: QDQ, per-channel int8 weights, minmax calibration on 4 " \
        "images of" in stdout and "reduce_range on." in stdout  # fmt: skip
    for engine in ("onnxruntime", "openvino"):  # each engine that runs the int8 file here
        assert re.search(rf"On 6 images of .*\(trainval\) in {engine}: mIoU fp32 [\d.]+, int8 "
                         r"[\d.]+ \([-+][\d.]+\); the labels agree on [\d.]+% of the pixels\.",
                         stdout), stdout  # fmt: skip
    int8 = Unet(model_path=str(out), device="cpu")
    assert int8.how() == "onnxruntime int8" and int8.class_names() == list(NAMES)
    metadata = dict(int8.engine.metadata)
    calibration = json.loads(metadata.pop("int8_calibration"))
    fp32 = Unet(model_path=str(busy / "busy.onnx"), device="cpu").engine.metadata
    assert metadata == dict(fp32)  # the fp32 export's settings, plus how it was calibrated
    assert calibration["images"] == 4 and calibration["reduce_range"] is True


def test_int8_that_loses_more_than_a_point_says_so_in_one_sentence():
    from utils.inference.export import Int8Check

    lines = Int8Check(80.0, 78.5, 0.97, 10).lines("VOCdevkit (val)")
    assert lines[0].startswith("On 10 images of VOCdevkit (val): mIoU fp32 80.00, int8 78.50 "
                               "(-1.50); the labels agree on 97.00%")  # fmt: skip
    assert lines[1].startswith("warning: int8 loses 1.50 mIoU points against fp32 here;")
    assert len(Int8Check(80.0, 79.5, 0.99, 10).lines("x")) == 1
