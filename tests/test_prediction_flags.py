"""Each flag of predict.py and get_miou.py that changes behaviour, end to end: what it does to
the saved drawings, class maps, videos, legends and metrics, not only the exit code. (TTA and
tiles are tested at the pipeline level in test_predict.py and test_inference.py.)"""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

import get_miou
import predict
import utils.device
from tests.conftest import save_random_weights, write_video, write_voc_pair
from tests.numerics import assert_labels_agree
from unet import Unet
from utils.data.classes import class_colors
from utils.data.demo_data import make_demo_dataset
from utils.device import Runtime, prefers_channels_last
from utils.drawing import draw_legend
from utils.errors import UserError
from utils.inference.pipeline import InferencePipeline, letterbox_input, tta_mode, tta_views

CPU_ONLY = ["--device", "cpu"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A busy 4-class VGG UNet (random kaiming weights), the demo data's class count."""
    return save_random_weights(tmp_path_factory.mktemp("vgg") / "vgg4.pth", num_classes=4)


@pytest.fixture(scope="module")
def plain(weights):
    """``weights`` as unet.Unet predicts with them by default: fp32, no TTA, whole images."""
    return predictor(weights)


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):
    """A 4-class ResNet50 UNet's weights, without a settings file."""
    folder = tmp_path_factory.mktemp("resnet")
    return save_random_weights(folder / "resnet4.pth", num_classes=4, backbone="resnet50")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Lossless noise pictures: ``small.png`` at the 32x32 input size, ``wide.png`` 48x32."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(7)
    for name, (width, height) in (("small", (32, 32)), ("wide", (48, 32))):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return folder


@pytest.fixture
def built(monkeypatch):
    """The predictors predict.py and get_miou.py build, each noting the dtypes of its logits."""
    made = []

    class Recording(Unet):
        def __init__(self, **kwargs):
            self.logit_dtypes = set()
            super().__init__(**kwargs)
            made.append(self)

        def _forward(self, images):
            logits = super()._forward(images)
            self.logit_dtypes.add(logits.dtype)
            return logits

    monkeypatch.setattr(predict, "Unet", Recording)
    monkeypatch.setattr(get_miou, "Unet", Recording)
    return made


def model_flags(weights, num_classes=4):
    return ["--model-path", str(weights), "--num-classes", str(num_classes),
            "--input-shape", "32", "32", *CPU_ONLY]  # fmt: skip


def predictor(weights, num_classes=4, **settings) -> Unet:
    settings = {"input_shape": [32, 32], **settings}
    return Unet(model_path=str(weights), num_classes=num_classes, device="cpu", **settings)


def drawn_labels(path, num_classes=4) -> np.ndarray:
    """The class map of a --mix-type 1 drawing, read back from its class colours."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    colors = np.array(class_colors(num_classes), dtype=np.uint8)
    matches = (pixels[:, :, None, :] == colors[None, None]).all(axis=-1)
    assert matches.any(axis=-1).all(), f"{path} has pixels in no class colour"
    return matches.argmax(axis=-1).astype(np.uint8)


def predict_drawing(cli, weights, picture, out, *flags) -> np.ndarray:
    """Run predict.py on one picture with --mix-type 1; the class map it drew."""
    argv = [str(picture), "--mix-type", "1", "--dir-save-path", str(out), *model_flags(weights),
            *flags]  # fmt: skip
    code, _, err = cli(predict.main, argv)
    assert code == 0, err
    return drawn_labels(out / f"{picture.stem}.png")


def probs_with(unet: Unet, image: Image.Image, **options) -> np.ndarray:
    """The (H, W, C) probabilities of ``image`` through ``unet``'s network in a pipeline with
    ``options`` (tile, stride, tta): a predictor with those settings, without loading the
    weights again."""
    pipeline = InferencePipeline(unet._forward, unet.input_shape, unet.runtime, **options)
    return pipeline.probabilities(image).permute(1, 2, 0).cpu().numpy()


def labels_with(unet: Unet, image: Image.Image, **options) -> np.ndarray:
    """The class map of :func:`probs_with`."""
    return probs_with(unet, image, **options).argmax(axis=-1).astype(np.uint8)


def first_3x3_conv(net: nn.Module) -> nn.Conv2d:
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))


# predict.py


def test_tta_flag_draws_the_average_of_the_image_and_mirrored_predictions(
    weights, plain, pictures, tmp_path, cli
):
    picture = pictures / "small.png"  # the input size: no letterbox padding to mirror
    drawn = predict_drawing(cli, weights, picture, tmp_path, "--tta")
    image = Image.open(picture).convert("RGB")
    probs = plain.probabilities(image)
    mirrored = plain.probabilities(ImageOps.mirror(image))[:, ::-1]
    averaged = (probs + mirrored) / 2
    assert_labels_agree(drawn, averaged.argmax(axis=-1), averaged)
    assert np.mean(drawn != probs.argmax(axis=-1)) > 0.01, "TTA changed nothing"


def test_tile_and_stride_flags_predict_in_windows_that_far_apart(
    weights, plain, pictures, tmp_path, cli
):
    picture = pictures / "wide.png"  # 48x32: wider than the 32-pixel tile
    drawn = predict_drawing(cli, weights, picture, tmp_path, "--tile", "32", "--stride", "8")
    image = Image.open(picture).convert("RGB")
    windowed = probs_with(plain, image, tile=32, stride=8)
    assert_labels_agree(drawn, windowed.argmax(axis=-1), windowed)
    assert np.mean(drawn != plain.labels(image)) > 0.01, "the same as the letterboxed image"
    default_stride = labels_with(plain, image, tile=32)  # stride tile // 2: windows 0 and 16
    assert np.mean(drawn != default_stride) > 0.001, "--stride had no effect"


@pytest.mark.bf16
def test_precision_bf16_flag_runs_the_network_under_bf16_autocast(
    weights, plain, pictures, tmp_path, cli, built
):
    picture = pictures / "small.png"
    drawn = predict_drawing(cli, weights, picture, tmp_path, "--precision", "bf16")
    (unet,) = built
    assert unet.runtime.precision == "bf16" and unet.logit_dtypes == {torch.bfloat16}
    image = Image.open(picture).convert("RGB")
    bf16_probs, fp32_probs = unet.probabilities(image), plain.probabilities(image)
    assert not np.array_equal(bf16_probs, fp32_probs)
    assert np.abs(bf16_probs - fp32_probs).max() < 0.2
    # bf16 keeps 8 bits of mantissa: about 1e-2 of rounding, which moves many near-even pixels
    # of random weights; most still agree
    assert np.mean(drawn == fp32_probs.argmax(axis=-1)) >= 0.8


def test_fp32_runs_the_network_in_fp32(weights, pictures, tmp_path, cli, built):
    predict_drawing(cli, weights, pictures / "small.png", tmp_path)
    assert built[0].runtime.precision == "fp32" and built[0].logit_dtypes == {torch.float32}


@pytest.mark.parametrize("native", [False, True], ids=["emulated", "native"])
def test_bf16_warns_that_it_is_slow_only_on_a_cpu_that_emulates_it(
    weights, cli, monkeypatch, recwarn, answer_prompts, native
):
    monkeypatch.setattr(utils.device, "cpu_has_native_bf16", lambda: native)
    answer_prompts([])  # no image asked for: build the predictor only
    assert cli(predict.main, ["--precision", "bf16", *model_flags(weights)])[0] == 0
    emulated = [w for w in recwarn if "no native bf16" in str(w.message)]
    assert len(emulated) == (0 if native else 1)
    if not native:
        assert emulated[0].category is UserWarning
        assert "use --precision fp32 on this machine" in str(emulated[0].message)


@pytest.mark.parametrize(
    ("flags", "channels_last"),
    [(["--channels-last"], True), (["--no-channels-last"], False),
     ([], prefers_channels_last(torch.device("cpu")))],
    ids=["channels-last", "no-channels-last", "default"],
)  # fmt: skip
def test_channels_last_flags_set_the_memory_format_of_the_network(
    weights, cli, built, answer_prompts, flags, channels_last
):
    answer_prompts([])  # no image asked for: build the predictor only
    code, out, _ = cli(predict.main, [*model_flags(weights), *flags])
    assert code == 0
    (unet,) = built
    weight = first_3x3_conv(unet.net).weight
    assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert weight.is_contiguous() is not channels_last
    assert unet.runtime.channels_last is channels_last
    assert ("channels-last)." if channels_last else "NCHW).") in out


def test_video_fps_flag_sets_the_frame_rate_of_the_saved_video(weights, tmp_path, cli):
    clip = write_video(tmp_path / "clip.avi", 3, fps=25)
    saved = tmp_path / "out.avi"
    argv = ["--mode", "video", "--video-path", str(clip), "--video-save-path", str(saved),
            "--video-fps", "7", *model_flags(weights)]  # fmt: skip
    code, out, err = cli(predict.main, argv)
    assert code == 0, err
    capture = cv2.VideoCapture(str(saved))
    try:
        assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(7)
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
        size = capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)
        assert size == (48, 32)
    finally:
        capture.release()
    assert "Saved 3 frames" in out


NAMES = ["sky", "road", "tree", "car"]


def test_name_classes_flag_names_the_count_table_and_the_legend(
    weights, plain, pictures, tmp_path, cli
):
    picture = pictures / "small.png"
    argv = [str(picture), "--count", "--name-classes", *NAMES, "--dir-save-path",
            str(tmp_path / "out"), *model_flags(weights)]  # fmt: skip
    code, out, _ = cli(predict.main, argv)
    assert code == 0
    rows = [line.split("|")[1].strip() for line in out.splitlines()
            if line.startswith("|") and "Key" not in line]  # fmt: skip
    present = np.unique(plain.labels(Image.open(picture)))
    assert len(present) > 1 and rows == [NAMES[i] for i in present]
    assert "class_0" not in out
    legend = np.asarray(Image.open(tmp_path / "out/legend.png"))
    expected = draw_legend(NAMES, class_colors(4), tmp_path / "expected.png")
    assert np.array_equal(legend, np.asarray(Image.open(expected)))
    default = draw_legend([f"class_{i}" for i in range(4)], class_colors(4), tmp_path / "d.png")
    default = np.asarray(Image.open(default))
    assert legend.shape != default.shape or not np.array_equal(legend, default)


def test_name_classes_of_the_wrong_length_are_refused_in_one_sentence(weights, pictures, cli):
    argv = [str(pictures / "small.png"), "--name-classes", "only", *model_flags(weights)]
    code, _, err = cli(predict.main, argv)
    assert code == 2 and "name_classes (--name-classes) has 1 names but the model has 4" in err


def test_resnet50_weights_predict_with_the_backbone_flag(
    resnet_weights, pictures, tmp_path, cli, built
):
    picture = pictures / "wide.png"
    drawn = predict_drawing(cli, resnet_weights, picture, tmp_path, "--backbone", "resnet50")
    (unet,) = built
    assert unet.backbone == "resnet50" and unet.net.backbone == "resnet50"
    assert hasattr(unet.net, "resnet") and not hasattr(unet.net, "vgg")
    assert drawn.shape == (32, 48)


def test_resnet50_weights_take_their_backbone_from_the_settings_file(
    resnet_weights, tmp_path, cli, built, answer_prompts
):
    model = tmp_path / "model.pth"
    model.symlink_to(resnet_weights)
    settings = {"backbone": "resnet50", "num_classes": 4, "input_shape": [32, 32]}
    (tmp_path / "model.json").write_text(json.dumps(settings))
    answer_prompts([])  # no image asked for: build the predictor only
    code, out, err = cli(predict.main, ["--model-path", str(model), *CPU_ONLY])
    assert code == 0, err
    (unet,) = built
    assert unet.net.backbone == "resnet50" and hasattr(unet.net, "resnet")
    assert "(4 classes, resnet50, 32x32" in out and "settings from" in out


def test_resnet50_weights_with_the_default_vgg_backbone_are_refused_in_one_sentence(
    resnet_weights, pictures, tmp_path, cli
):
    argv = [str(pictures / "small.png"), "--dir-save-path", str(tmp_path),
            *model_flags(resnet_weights)]  # fmt: skip
    code, _, err = cli(predict.main, argv)
    assert code == 2 and "Traceback" not in err
    sentence = "holds resnet50 weights but backbone is vgg; set backbone (--backbone) to resnet50"
    assert sentence in err
    assert not (tmp_path / "small.png").exists()


def test_cuda_true_without_a_visible_gpu_runs_on_the_cpu_and_says_so(
    weights, pictures, monkeypatch, capsys
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    unet = Unet(model_path=str(weights), num_classes=4, input_shape=[32, 32], cuda=True)
    assert "cuda=True but no CUDA GPU is visible: running on the CPU." in capsys.readouterr().out
    assert unet.runtime.device == torch.device("cpu")
    assert next(unet.net.parameters()).device == torch.device("cpu")
    assert unet.get_miou_png(Image.open(pictures / "small.png")).size == (32, 32)


# get_miou.py


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """Two 4-class demo images of about 40x28 (wider than a 32-pixel tile), both in the
    trainval split."""
    return make_demo_dataset(tmp_path_factory.mktemp("voc") / "VOCdevkit", 2, size=(40, 28))


def miou_argv(voc, weights, out, *flags) -> list[str]:
    return ["--dataset-path", str(voc), "--split", "trainval", "--miou-out-path", str(out),
            *model_flags(weights), *flags]  # fmt: skip


@pytest.fixture(scope="module")
def plain_run(voc, weights, tmp_path_factory):
    """get_miou.py --miou-mode 0 without extra flags: its output folder."""
    out = tmp_path_factory.mktemp("plain") / "miou_out"
    get_miou.main(miou_argv(voc, weights, out))
    return out


def ids(voc) -> list[str]:
    return (voc / "VOC2007/ImageSets/Segmentation/trainval.txt").read_text().split()


def voc_image(voc, name: str) -> Image.Image:
    return Image.open(voc / "VOC2007/JPEGImages" / f"{name}.jpg").convert("RGB")


def saved_predictions(out) -> dict[str, np.ndarray]:
    return {p.stem: np.array(Image.open(p)) for p in sorted((out / "detection-results").iterdir())}


def agreement(saved: dict, expected: dict) -> float:
    """The share of pixels where two sets of class maps (by id) agree."""
    assert saved.keys() == expected.keys()
    same = sum(int((saved[k] == expected[k]).sum()) for k in saved)
    return same / sum(v.size for v in saved.values())


def test_miou_mode_1_only_predicts(voc, weights, plain_run, tmp_path, cli):
    out = tmp_path / "miou_out"
    code, stdout, err = cli(get_miou.main, miou_argv(voc, weights, out, "--miou-mode", "1"))
    assert code == 0, err
    saved = saved_predictions(out)
    assert sorted(saved) == sorted(ids(voc))
    assert all(saved[name].shape == voc_image(voc, name).size[::-1] for name in saved)
    assert agreement(saved, saved_predictions(plain_run)) == 1  # what mode 0 predicts
    assert sorted(p.name for p in out.iterdir()) == ["detection-results"]
    assert "Get predict result done." in stdout and "Get miou" not in stdout


def test_miou_mode_2_evaluates_existing_predictions_without_building_a_predictor(
    voc, weights, plain_run, tmp_path, cli, monkeypatch
):
    def no_predictor(**_):
        raise AssertionError("--miou-mode 2 built a predictor")

    monkeypatch.setattr(get_miou, "Unet", no_predictor)
    out = tmp_path / "miou_out"
    shutil.copytree(plain_run / "detection-results", out / "detection-results")
    code, stdout, err = cli(get_miou.main, miou_argv(voc, weights, out, "--miou-mode", "2"))
    assert code == 0, err
    assert "Get predict result" not in stdout and "===> mIoU:" in stdout
    ours = json.loads((out / "metrics.json").read_text())
    assert ours == json.loads((plain_run / "metrics.json").read_text())
    assert (out / "confusion_matrix.csv").read_text() == (
        plain_run / "confusion_matrix.csv").read_text()  # fmt: skip


def test_miou_mode_2_without_predictions_is_refused_in_one_sentence(voc, weights, tmp_path, cli):
    out = tmp_path / "miou_out"
    code, _, err = cli(get_miou.main, miou_argv(voc, weights, out, "--miou-mode", "2"))
    assert code == 2 and "Traceback" not in err
    assert "prediction file" in err and "detection-results" in err and "does not exist" in err


def test_get_miou_tta_flag_saves_the_mirror_averaged_predictions(
    voc, weights, plain, plain_run, tmp_path, cli
):
    out = tmp_path / "miou_out"
    code, _, err = cli(get_miou.main, miou_argv(voc, weights, out, "--tta", "--miou-mode", "1"))
    assert code == 0, err
    saved = saved_predictions(out)
    for name in saved:
        averaged = probs_with(plain, voc_image(voc, name), tta=True)
        assert_labels_agree(saved[name], averaged.argmax(axis=-1), averaged)
    assert agreement(saved, saved_predictions(plain_run)) < 0.99, "TTA changed nothing"


def test_get_miou_tile_and_stride_flags_save_windowed_predictions(
    voc, weights, plain, plain_run, tmp_path, cli
):
    out = tmp_path / "miou_out"
    argv = miou_argv(voc, weights, out, "--tile", "32", "--stride", "8", "--miou-mode", "1")
    code, _, err = cli(get_miou.main, argv)
    assert code == 0, err
    saved = saved_predictions(out)
    for name in saved:
        windowed = probs_with(plain, voc_image(voc, name), tile=32, stride=8)
        assert_labels_agree(saved[name], windowed.argmax(axis=-1), windowed)
    assert agreement(saved, saved_predictions(plain_run)) < 0.99, "the same as letterboxed"


@pytest.mark.bf16
def test_get_miou_precision_flag_predicts_under_bf16_autocast(
    voc, weights, plain_run, tmp_path, cli, built
):
    out = tmp_path / "miou_out"
    argv = miou_argv(voc, weights, out, "--precision", "bf16", "--miou-mode", "1")
    code, _, err = cli(get_miou.main, argv)
    assert code == 0, err
    (unet,) = built
    assert unet.runtime.precision == "bf16" and unet.logit_dtypes == {torch.bfloat16}
    assert agreement(saved_predictions(out), saved_predictions(plain_run)) >= 0.8


@pytest.fixture
def absent_class_root(tmp_path):
    """Two 8x8 pairs over classes 0 and 1 only, with hand-made predictions: class 2 appears in
    no label and no prediction. Per image: IoU 0 = 24/32, IoU 1 = 32/40."""
    root = tmp_path / "VOCdevkit"
    label = np.zeros((8, 8), np.uint8)
    label[:, 4:] = 1
    prediction = np.zeros((8, 8), np.uint8)
    prediction[:, 3:] = 1
    predictions = tmp_path / "miou_out" / "detection-results"
    predictions.mkdir(parents=True)
    splits = root / "VOC2007/ImageSets/Segmentation"
    for name in ("a", "b"):
        write_voc_pair(root, name, np.zeros((8, 8, 3), np.uint8), label)
        Image.fromarray(prediction).save(predictions / f"{name}.png")
    splits.mkdir(parents=True)
    (splits / "val.txt").write_text("a\nb\n")
    return root


def test_a_class_absent_from_labels_and_predictions_is_reported_as_n_a(
    absent_class_root, tmp_path, cli
):
    out = tmp_path / "miou_out"
    argv = ["--dataset-path", str(absent_class_root), "--miou-out-path", str(out),
            "--miou-mode", "2", "--num-classes", "3", "--model-path", "", *CPU_ONLY]  # fmt: skip
    code, stdout, err = cli(get_miou.main, argv)
    assert code == 0, err
    assert "===>class_2:\tIou-n/a; Recall (equal to the PA)-n/a; Precision-n/a" in stdout
    assert "===>class_0:\tIou-75.0;" in stdout and "===>class_1:\tIou-80.0;" in stdout
    assert "===> mIoU: 77.50;" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["per_class"]["class_2"] == {"IoU": None, "recall": None, "precision": None}
    assert metrics["per_class"]["class_0"]["IoU"] == pytest.approx(0.75)
    assert metrics["mIoU"] == pytest.approx((0.75 + 0.8) / 2)


def test_prediction_lets_cudnn_autotune_for_its_fixed_input_size_while_it_runs(
    voc, weights, pictures, tmp_path, cli, monkeypatch
):
    seen = []

    class Noting(Unet):
        def __init__(self, **kwargs):
            seen.append(torch.backends.cudnn.benchmark)
            super().__init__(**kwargs)

    monkeypatch.setattr(predict, "Unet", Noting)
    monkeypatch.setattr(get_miou, "Unet", Noting)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # PyTorch's default
    argv = [str(pictures / "small.png"), "--dir-save-path", str(tmp_path), *model_flags(weights)]
    assert cli(predict.main, argv)[0] == 0
    miou = miou_argv(voc, weights, tmp_path / "miou", "--miou-mode", "1")
    assert cli(get_miou.main, miou)[0] == 0
    assert seen == [True, True] and torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize("shape", [(64, 64), (64, 96)])
def test_tta_d4_averages_every_turn_and_mirror_turned_back(weights, plain, pictures, shape):
    """Against the 8 views averaged by hand; a non-square input is turned too (torch takes
    the swapped size) and its probabilities come back at the input's own shape."""
    picture = Image.open(pictures / "small.png").convert("RGB").resize(shape[::-1])
    unet = predictor(weights, tta="d4", input_shape=list(shape))
    pipeline = unet.pipeline
    x = letterbox_input(picture, shape)[0][None]
    once = InferencePipeline(pipeline.forward, shape, pipeline.runtime)  # no TTA
    views = []
    for turns in range(4):
        for mirror in (False, True):
            view = torch.rot90(x.flip(-1) if mirror else x, turns, (-2, -1))
            seen = torch.rot90(once.input_probabilities(view), -turns, (-2, -1))
            views.append(seen.flip(-1) if mirror else seen)
    by_hand = torch.stack(views).mean(0)
    d4 = pipeline.input_probabilities(x)
    assert d4.shape == by_hand.shape == (1, unet.num_classes, *shape)
    assert torch.allclose(d4, by_hand, atol=1e-5)  # one sum order against another


def test_tta_d4_keeps_the_shape_preserving_views_where_the_network_size_is_fixed(onnx_files):
    assert len(tta_views("d4", quarter_turns=True)) == 7 and tta_views("flip") == [(0, True)]
    assert sorted(tta_views("d4", quarter_turns=False)) == [(0, True), (2, False), (2, True)]
    with pytest.raises(UserError, match="unknown --tta 'd8'; use flip or d4"):
        tta_mode("d8")
    seen = []

    def fixed(x: torch.Tensor) -> torch.Tensor:  # a network exported for 32x48 only
        assert x.shape[-2:] == (32, 48), x.shape
        seen.append(x.shape)
        return torch.zeros(len(x), 2, 32, 48)

    pipeline = InferencePipeline(fixed, (32, 48), Runtime(torch.device("cpu")), tta="d4",
                                 fixed_size=True)  # fmt: skip
    pipeline.input_probabilities(torch.zeros(1, 3, 32, 48, dtype=torch.uint8))
    assert len(seen) == 4  # the input, the two mirrors and the half turn
    static = Unet(model_path=str(onnx_files / "static.onnx"), device="cpu", tta="d4")
    dynamic = Unet(model_path=str(onnx_files / "dynamic.onnx"), device="cpu", tta="d4")
    assert static.pipeline.fixed_size and not dynamic.pipeline.fixed_size


@pytest.mark.parametrize(
    "argv, tta, images",
    [
        (["--tta", "x.jpg"], "flip", ["x.jpg"]),  # an image after --tta stays an image
        (["x.jpg", "--tta"], "flip", ["x.jpg"]),
        (["--tta", "d4", "x.jpg"], "d4", ["x.jpg"]),
        ([], None, []),
    ],
)
def test_tta_takes_a_mode_only_when_one_follows(argv, tta, images):
    args = predict.get_parser().parse_args(argv)
    assert (args.tta, args.images) == (tta, images)


def test_a_misspelt_tta_mode_is_an_invalid_choice(cli):
    code, _, err = cli(predict.main, ["x.jpg", "--tta", "d8"])
    assert code == 2 and "argument --tta: invalid choice: 'd8'" in err
