"""Prediction and evaluation: unet.Unet, predict.py modes, get_miou.py, tiling, TTA, ONNX."""

import json
import re

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import get_miou
import predict
import train
from tests.conftest import save_random_weights
from tests.numerics import assert_labels_agree
from unet import Unet
from utils.data.demo_data import make_demo_dataset
from utils.device import Runtime, cpu_has_native_bf16
from utils.inference.pipeline import InferencePipeline


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_weights(tmp_path_factory.mktemp("w") / "tiny.pth", num_classes=3)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.jpg", (40, 30)), ("b.png", (32, 48))):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            folder / name
        )
    return folder


def predictor(weights, **kwargs):
    return Unet(model_path=str(weights), num_classes=3, input_shape=[32, 32], cuda=False, **kwargs)


class HalfAndHalf(nn.Module):
    """Class 1 on the left half of the input, class 0 on the right."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 3, *x.shape[2:])
        half = x.shape[-1] // 2
        logits[:, 1, :, :half] = 10
        logits[:, 0, :, half:] = 10
        return logits


@pytest.mark.parametrize("mix_type", [0, 1, 2])
def test_mix_types_draw_the_reference_pixels(weights, mix_type):
    unet = predictor(weights, mix_type=mix_type)
    unet.net = HalfAndHalf()
    image = Image.new("RGB", (32, 32), (100, 50, 200))
    out = np.array(unet.detect_image(image))
    left, right = out[5, 3], out[5, 28]
    if mix_type == 0:  # Image.blend(image, colours, 0.7): a + 0.7 * (b - a), truncated
        assert tuple(left) == (119, 15, 60) and tuple(right) == (30, 15, 60)
    elif mix_type == 1:
        assert tuple(left) == (128, 0, 0) and tuple(right) == (0, 0, 0)
    else:
        assert tuple(left) == (100, 50, 200) and tuple(right) == (0, 0, 0)


def test_count_prints_a_table(weights, capsys):
    unet = predictor(weights)
    unet.net = HalfAndHalf()
    unet.detect_image(Image.new("RGB", (32, 32)), count=True, name_classes=["bg", "cat", "dog"])
    out = capsys.readouterr().out
    assert re.search(r"\|\s+bg \|\s+512 \|\s+50.00%\|", out) and "cat" in out and "dog" not in out


class Pointwise(nn.Module):
    """A 1x1 conv: each pixel's prediction depends only on that pixel."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x) * 5


def probabilities(model, image, **options) -> np.ndarray:
    """(H, W, C) probabilities of ``image`` through the pipeline at a 32x32 input, on the CPU."""
    pipeline = InferencePipeline(model, (32, 32), Runtime(torch.device("cpu")), **options)
    return pipeline.probabilities(image).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_tiling_covers_an_image_not_a_multiple_of_the_tile(batch_size):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (70, 100, 3), dtype=np.uint8)
    model = Pointwise()
    pipeline = InferencePipeline(model, (32, 32), Runtime(torch.device("cpu")), tile=32, stride=20)
    tiled = pipeline._tiled(pixels, batch_size).permute(1, 2, 0).numpy()
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = torch.softmax(model(x)[0], dim=0).permute(1, 2, 0).numpy()
    assert tiled.shape == (70, 100, 3)
    np.testing.assert_allclose(tiled, expected, atol=1e-5)


def test_tta_averages_with_the_mirrored_prediction():
    torch.manual_seed(2)
    model = nn.Conv2d(3, 3, 3, padding=1)  # not mirror-symmetric
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    plain = probabilities(model, image)
    mirrored = probabilities(model, image.transpose(Image.FLIP_LEFT_RIGHT))
    tta = probabilities(model, image, tta=True)
    np.testing.assert_allclose(tta, (plain + mirrored[:, ::-1]) / 2, atol=1e-6)
    with torch.no_grad():  # symmetric weights: mirroring changes nothing
        model.weight.copy_((model.weight + model.weight.flip(-1)) / 2)
    np.testing.assert_allclose(
        probabilities(model, image, tta=True), probabilities(model, image), atol=1e-6
    )


def model_flags(weights):
    return ["--model-path", str(weights), "--num-classes", "3", "--input-shape", "32", "32",
            "--device", "cpu"]  # fmt: skip


def test_predict_mode_saves_each_image(weights, images, tmp_path, cli):
    argv = [str(images / "a.jpg"), str(images / "b.png"), *model_flags(weights),
            "--dir-save-path", str(tmp_path / "out")]  # fmt: skip
    assert cli(predict.main, argv)[0] == 0
    assert Image.open(tmp_path / "out/a.png").size == (40, 30)
    assert Image.open(tmp_path / "out/b.png").size == (32, 48)


def test_fps_mode_uses_its_image_path(weights, images, cli, without_openvino):
    argv = ["--mode", "fps", "--fps-image-path", str(images / "a.jpg"), "--test-interval", "2",
            *model_flags(weights)]  # fmt: skip
    code, out, _ = cli(predict.main, argv)
    assert code == 0
    assert "Seconds per image on cpu, " in out and "a.jpg (40x30), 2 runs each:" in out
    assert "network + argmax at 32x32" in out and "whole get_miou_png" in out
    rows = [line for line in out.splitlines() if line.startswith(("torch ", "onnxruntime "))]
    assert rows[0].startswith("torch fp32") and rows[0].endswith("x1.00")  # the baseline
    assert any(row.startswith("onnxruntime fp32") for row in rows)
    assert any(row.startswith("torch bf16") for row in rows) == cpu_has_native_bf16()
    assert "images/s @batch_size 8" in out


def test_onnx_export_and_predict_match_torch(trained, onnx_files, images, tmp_path, cli):
    printed = (onnx_files / "export.txt").read_text()
    assert float(printed.split("max abs difference ")[1].split()[0]) < 1e-3
    weights = trained[1] / "last_epoch_weights.pth"
    for mode, folder in (("predict", "torch"), ("predict_onnx", "onnx")):
        argv = [str(images / "a.jpg"), "--mode", mode, "--onnx-path",
                str(onnx_files / "static.onnx"), "--model-path", str(weights), "--mix-type", "1",
                "--device", "cpu", "--dir-save-path", str(tmp_path / folder)]  # fmt: skip
        assert cli(predict.main, argv)[0] == 0
    ours = np.array(Image.open(tmp_path / "torch/a.png"))
    theirs = np.array(Image.open(tmp_path / "onnx/a.png"))
    probs = Unet(model_path=str(weights), device="cpu").probabilities(Image.open(images / "a.jpg"))
    assert_labels_agree(theirs, ours, probs)  # onnxruntime and torch round apart


def test_simplify_runs_onnxsim_when_there_and_no_simplify_skips_it(trained, onnx_files,
                                                                    tmp_path, cli):  # fmt: skip
    import importlib.util

    printed = (onnx_files / "export.txt").read_text()  # exported with the default --simplify
    has_onnxsim = importlib.util.find_spec("onnxsim") is not None
    assert ("onnxsim is not installed: the graph is saved unsimplified." in printed) != has_onnxsim
    argv = ["--mode", "export_onnx", "--no-simplify", "--device", "cpu", "--model-path",
            str(trained[1] / "last_epoch_weights.pth"),
            "--onnx-save-path", str(tmp_path / "plain.onnx")]  # fmt: skip
    code, out, _ = cli(predict.main, argv)
    assert (
        code == 0 and "onnxsim is not installed" not in out and (tmp_path / "plain.onnx").is_file()
    )


def test_clear_errors(weights, images, tmp_path, cli):
    code, _, err = cli(predict.main, [str(images / "a.jpg"), "--model-path", "nope.pth"])
    assert code == 2 and "nope.pth' does not exist" in err
    argv = [str(images / "a.jpg"), *model_flags(weights)]
    argv[argv.index("--num-classes") + 1] = "21"
    code, _, err = cli(predict.main, argv)
    assert code == 2 and "trained with 3 classes but num_classes is 21; set num_classes" in err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    code, _, err = cli(predict.main, [str(broken), *model_flags(weights)])
    assert code == 2 and "broken.jpg' cannot be read" in err
    argv = [str(images / "a.jpg"), *model_flags(weights), "--backbone", "resnet50"]
    code, _, err = cli(predict.main, argv)
    assert code == 2 and "holds vgg weights but backbone is resnet50" in err


def test_get_miou_equals_the_in_training_miou_and_writes_its_files(tmp_path, cli):
    root = make_demo_dataset(tmp_path / "VOCdevkit", 12, size=(48, 40))
    argv = ["--dataset-path", str(root), "--num-classes", "4", "--model-path", "",
            "--input-shape", "32", "32", "--num-workers", "0", "--save-dir", str(tmp_path / "logs"),
            "--no-freeze-train", "--unfreeze-epoch", "1", "--eval-period", "1",
            "--device", "cpu"]  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    in_training = float(next((tmp_path / "logs").glob("loss_*/epoch_miou.txt")).read_text())
    out = tmp_path / "miou_out"
    argv = ["--dataset-path", str(root), "--miou-out-path", str(out), "--model-path",
            str(tmp_path / "logs/last_epoch_weights.pth"), "--num-classes", "4",
            "--input-shape", "32", "32", "--device", "cpu"]  # fmt: skip
    code, stdout, _ = cli(get_miou.main, argv)
    assert code == 0 and "===> mIoU:" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mIoU"] * 100 == pytest.approx(in_training, abs=1e-9)
    assert sorted(p.name for p in out.iterdir()) == [
        "Precision.png", "Recall.png", "confusion_matrix.csv", "detection-results", "legend.png",
        "mIoU.png", "mPA.png", "metrics.json",
    ]  # fmt: skip
    assert len(list((out / "detection-results").glob("*.png"))) == 3  # 12 images: 9 train, 3 val
    assert set(metrics["per_class"]) == {"class_0", "class_1", "class_2", "class_3"}


def vgg_unet_flops(height: int, width: int, classes: int) -> int:
    """The original summary.py's count, worked out from the architecture alone: 2 x the
    multiply-adds of every convolution (thop's convention; bias adds and upsampling left out)."""
    total = 0
    levels = [  # (stride, [(in, out) of each 3x3 conv])
        (1, [(3, 64), (64, 64)]), (2, [(64, 128), (128, 128)]),
        (4, [(128, 256), (256, 256), (256, 256)]), (8, [(256, 512), (512, 512), (512, 512)]),
        (16, [(512, 512)] * 3),  # the VGG16 encoder
        (8, [(1024, 512), (512, 512)]), (4, [(768, 256), (256, 256)]),
        (2, [(384, 128), (128, 128)]), (1, [(192, 64), (64, 64)]),  # the decoder
    ]  # fmt: skip
    for stride, convs in levels:
        pixels = (height // stride) * (width // stride)
        total += sum(cin * cout * 9 * pixels for cin, cout in convs)
    total += 64 * classes * height * width  # the 1x1 head
    return 2 * total


def test_summary_reports_the_originals_flops_and_params(cli):
    import summary

    assert vgg_unet_flops(512, 512, 21) / 1e9 == pytest.approx(450.97, abs=0.01)  # 512x512
    code, out, _ = cli(summary.main, ["--input-shape", "64", "96", "--num-classes", "21"])
    assert code == 0 and "Total params: 24,892,437" in out
    gflops = float(out.split("Total GFLOPS: ")[1].split("G")[0])
    assert gflops == pytest.approx(vgg_unet_flops(64, 96, 21) / 1e9, abs=5e-4)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA"])
def test_grayscale_palette_and_alpha_images_are_converted(weights, mode):
    unet = predictor(weights, mix_type=1)
    out = unet.detect_image(Image.new(mode, (40, 24)))
    assert out.mode == "RGB" and out.size == (40, 24)
    assert unet.get_miou_png(Image.new(mode, (40, 24))).size == (40, 24)


def test_show_on_a_headless_opencv_is_a_clear_error(weights, images, cli):
    if cv2.getBuildInformation().split("GUI:")[1].split()[0] != "NONE":
        pytest.skip("this OpenCV can open windows")
    argv = [str(images / "a.jpg"), *model_flags(weights), "--show"]
    code, _, err = cli(predict.main, argv)
    assert code == 2 and "--show needs OpenCV with GUI support" in err
