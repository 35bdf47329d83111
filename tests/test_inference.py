"""The device-resident, batched inference pipeline against the original's host pipeline."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import get_miou
import predict
from nets.unet import Unet as Model
from oracle.original import RefPredictor
from tests.conftest import save_random_weights, shared_data, write_video
from tests.numerics import assert_labels_agree
from unet import Unet
from utils.images import read_image
from utils.inference.pipeline import Placement, class_map, labels_at_original, resize_to_original

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A VGG UNet with 5 classes and kaiming weights: busy class maps, many class borders."""
    return save_random_weights(tmp_path_factory.mktemp("weights") / "vgg5.pth", num_classes=5)


def ours_and_reference(model_file, input_shape, mix_type=0):
    ours = Unet(model_path=str(model_file), num_classes=5, input_shape=list(input_shape),
                device="cpu", mix_type=mix_type)  # fmt: skip
    net = Model(num_classes=5)
    net.load_state_dict(torch.load(model_file, weights_only=True))
    return ours, RefPredictor(net, input_shape, "cpu", mix_type=mix_type)


SHARED_IMAGES = [
    ("samples", "street.jpg"),
    ("samples", "cell.png"),
    ("isbi2012_cells", "Images", "0.png"),
    ("isbi2012_cells", "Images", "27.png"),
]


@pytest.mark.slow
@pytest.mark.parametrize("parts", SHARED_IMAGES, ids=lambda parts: parts[-1])
def test_labels_match_the_originals_cv2_pipeline_on_real_images(model_file, parts):
    image = read_image(shared_data(*parts))
    ours, reference = ours_and_reference(model_file, (128, 96))  # letterbox padding included
    labels = ours.labels(image)
    expected = reference.labels(image)
    assert labels.shape == expected.shape == (image.height, image.width)
    assert len(np.unique(expected)) > 1, "a class map with one class tests nothing"
    assert_labels_agree(labels, expected, ours.probabilities(image))  # cv2 and torch round apart
    assert np.array_equal(np.array(ours.get_miou_png(image)), labels)


@pytest.mark.parametrize("mix_type", [0, 1, 2])
def test_drawings_differ_from_the_originals_only_where_the_labels_do(model_file, mix_type):
    rng = np.random.default_rng(3)
    image = Image.fromarray(cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8),
                                       (200, 150), interpolation=cv2.INTER_CUBIC))  # fmt: skip
    ours, reference = ours_and_reference(model_file, (64, 64), mix_type)
    labels, expected_labels = ours.labels(image), reference.labels(image)
    assert_labels_agree(labels, expected_labels, ours.probabilities(image))
    same = labels == expected_labels
    drawn = np.array(ours.detect_image(image))
    expected = np.array(reference.detect_image(image))
    assert drawn.shape == expected.shape == (150, 200, 3)
    assert np.array_equal(drawn[same], expected[same])


@pytest.fixture
def mixed_images(tmp_path):
    """Images of mixed sizes and modes: RGB JPEG and PNG, grayscale, palette and RGBA."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(1)
    sizes = [(200, 150), (120, 180), (256, 64), (90, 90), (150, 210), (64, 128), (300, 100)]
    for i, (w, h) in enumerate(sizes):
        coarse = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC))
        mode = ["RGB", "L", "P", "RGBA", "RGB", "L", "RGB"][i]
        image = image.convert(mode) if mode != "P" else image.quantize(16)
        image.save(folder / f"{i}.{'jpg' if mode == 'RGB' and i % 2 == 0 else 'png'}")
    return sorted(folder.iterdir())


@pytest.mark.parametrize(("batch_size", "num_workers"), [(3, 0), (4, 2)])
def test_batches_of_mixed_sizes_equal_one_image_at_a_time(
    model_file, mixed_images, batch_size, num_workers
):
    unet = Unet(model_path=str(model_file), num_classes=5, input_shape=[64, 64], device="cpu")
    results = list(unet.predict_files(mixed_images, batch_size, num_workers, keep_image=True))
    assert [result.path for result in results] == mixed_images
    for path, labels, image, error, scores in results:
        assert error is None and scores is None
        single = unet.labels(read_image(path))
        assert labels.dtype == np.uint8 and labels.shape == single.shape
        assert image.shape == (*single.shape, 3)  # converted to RGB, decoded once
        assert_labels_agree(labels, single, unet.probabilities(read_image(path)))


@pytest.mark.parametrize("tile", [None, 48])
def test_a_class_probability_comes_back_in_255ths_beside_the_class_map(
    model_file, mixed_images, tile
):
    """The ISBI challenge scores a probability map: get_miou keeps the cells' as 8 bits."""
    unet = Unet(model_path=str(model_file), num_classes=5, input_shape=[32, 32], device="cpu",
                tile=tile)  # fmt: skip
    for result in unet.predict_files(mixed_images[:3], batch_size=2, scores_of=3):
        image = read_image(result.path)
        probs = unet.probabilities(image)
        assert result.scores.dtype == np.uint8 and result.scores.shape == result.labels.shape
        # rounded to 255ths: at most half a step off, plus batched-vs-single float noise
        assert np.abs(result.scores - 255 * probs[..., 3]).max() <= 0.5 + 1e-3
        assert_labels_agree(result.labels, unet.labels(image), probs)


@pytest.mark.slow
def test_tiles_in_batches_equal_tiles_one_at_a_time(model_file, mixed_images):
    unet = Unet(model_path=str(model_file), num_classes=5, input_shape=[32, 32], device="cpu",
                tile=64, stride=40)  # fmt: skip
    for path, labels, *_ in unet.predict_files(mixed_images[:3], batch_size=4):
        image = read_image(path)
        assert_labels_agree(labels, unet.labels(image), unet.probabilities(image))


@pytest.mark.slow
def test_get_miou_batches_give_the_figures_of_one_image_at_a_time(tmp_path, model_file, cli):
    """Batched and one-at-a-time prediction run different kernels: their masks agree outside
    near-ties, so their confusion matrices differ only by those pixels' moves."""
    import json

    from utils.data.demo_data import make_demo_dataset

    root = make_demo_dataset(tmp_path / "VOCdevkit", 16, size=(72, 56))
    runs = {}
    for batch_size, workers in (("1", "0"), ("5", "2")):
        out = tmp_path / f"miou_{batch_size}"
        argv = ["--dataset-path", str(root), "--split", "trainval", "--num-classes", "5",
                "--model-path", str(model_file), "--input-shape", "64", "64", "--device", "cpu",
                "--batch-size", batch_size, "--num-workers", workers,
                "--miou-out-path", str(out)]  # fmt: skip
        assert cli(get_miou.main, argv)[0] == 0
        runs[batch_size] = out
        assert len(list((out / "detection-results").glob("*.png"))) == 16
    unet = Unet(model_path=str(model_file), num_classes=5, input_shape=[64, 64], device="cpu")
    moved = 0
    for image_path in sorted((root / "VOC2007/JPEGImages").iterdir()):
        one, batched = (np.array(Image.open(runs[b] / f"detection-results/{image_path.stem}.png"))
                        for b in ("1", "5"))  # fmt: skip
        moved += assert_labels_agree(batched, one, unet.probabilities(read_image(image_path)))
    one, batched = (json.loads((runs[b] / "metrics.json").read_text()) for b in ("1", "5"))
    matrices = [np.array(m.pop("confusion_matrix")) for m in (one, batched)]
    assert np.abs(matrices[0] - matrices[1]).sum() <= 2 * moved  # each flip moves one count
    assert one.keys() == batched.keys() and one["num_images"] == batched["num_images"] == 16
    # a moved count changes a figure by about 1 / (the pixels of a class): well under 1e-3 here
    assert abs(one["mIoU"] - batched["mIoU"]) <= 1e-3
    assert abs(one["accuracy"] - batched["accuracy"]) <= moved / matrices[0].sum()


def test_dir_predict_skips_an_unreadable_image_and_says_so(model_file, mixed_images, tmp_path,
                                                          cli):  # fmt: skip
    broken = mixed_images[0].parent / "2b.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    argv = ["--mode", "dir_predict", "--dir-origin-path", str(broken.parent),
            "--dir-save-path", str(out), "--batch-size", "3", "--num-workers", "2",
            "--model-path", str(model_file), "--num-classes", "5", "--input-shape", "64", "64",
            "--device", "cpu"]  # fmt: skip
    code, stdout, err = cli(predict.main, argv)
    assert code == 0, err
    assert "warning: skipped image file" in stdout and "2b.jpg' cannot be read" in stdout
    assert f"saved 7 of 8 to {out}" in stdout and "skipped 1:" in stdout
    assert sorted(p.stem for p in out.iterdir()) == sorted(
        [*(p.stem for p in mixed_images), "legend"]
    )


def test_dir_predict_with_nothing_readable_is_an_error(model_file, tmp_path, cli):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"not a jpeg")
    argv = ["--mode", "dir_predict", "--dir-origin-path", str(folder), "--model-path",
            str(model_file), "--num-classes", "5", "--input-shape", "64", "64", "--device", "cpu",
            "--dir-save-path", str(tmp_path / "out")]  # fmt: skip
    code, _, err = cli(predict.main, argv)
    assert code == 2 and "no image in" in err and "(1 tried)" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("main", "flag"),
    [(get_miou.main, "--batch-size"), (predict.main, "--batch-size"),
     (predict.main, "--fps-batch-size")],
)  # fmt: skip
def test_a_batch_size_of_zero_is_refused_before_any_work(main, flag, cli):
    code, _, err = cli(main, [flag, "0", "--model-path", "missing.pth"])
    assert code == 2 and f"{flag} must be at least 1, not 0" in err


def test_dir_predict_in_batches_draws_what_detect_image_draws(model_file, mixed_images, tmp_path,
                                                              cli):  # fmt: skip
    out = tmp_path / "out"
    argv = ["--mode", "dir_predict", "--dir-origin-path", str(mixed_images[0].parent),
            "--dir-save-path", str(out), "--batch-size", "3", "--model-path", str(model_file),
            "--num-classes", "5", "--input-shape", "64", "64", "--device", "cpu"]  # fmt: skip
    assert cli(predict.main, argv)[0] == 0
    unet = Unet(model_path=str(model_file), num_classes=5, input_shape=[64, 64], device="cpu")
    for path in mixed_images:
        saved = np.array(Image.open(out / f"{path.stem}.png"))
        single = np.array(unet.detect_image(Image.open(path)))
        assert saved.shape == single.shape
        assert_labels_agree(saved, single, unet.probabilities(read_image(path)))


@pytest.mark.parametrize("batch_size", ["1", "3"])
def test_video_keeps_every_frame_in_batches(model_file, tmp_path, cli, batch_size):
    clip = write_video(tmp_path / "clip.avi", 7)
    out_path = tmp_path / "out.avi"
    argv = ["--mode", "video", "--video-path", str(clip), "--video-save-path", str(out_path),
            "--batch-size", batch_size, "--mix-type", "2", "--model-path", str(model_file),
            "--num-classes", "5", "--input-shape", "32", "32", "--device", "cpu"]  # fmt: skip
    code, out, _ = cli(predict.main, argv)
    assert code == 0 and "Saved 7 frames" in out
    capture = cv2.VideoCapture(str(out_path))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 7


def test_a_video_that_cannot_be_read_is_a_clear_error(model_file, tmp_path, cli):
    argv = ["--mode", "video", "--video-path", str(tmp_path / "none.avi"),
            "--model-path", str(model_file), "--num-classes", "5", "--device", "cpu"]  # fmt: skip
    code, _, err = cli(predict.main, argv)
    assert code == 2 and "cannot read from --video-path" in err


@pytest.mark.slow
def test_the_predict_benchmark_prints_every_row(tmp_path, monkeypatch, capsys):
    import json

    from benchmarks import predict_speed

    monkeypatch.setenv("PREDICT_SPEED_JSON", str(tmp_path / "speed.json"))
    predict_speed.main(["--device", "cpu", "--input-shape", "32", "32", "--num-classes", "3",
                        "--repeats", "1", "--eval-images", "3", "--batch-size", "2"])  # fmt: skip
    out = capsys.readouterr().out
    rows = ["network + argmax, torch fp32, channels-last", "network + argmax, torch fp32, NCHW",
            "get_miou_png street.jpg, ours torch fp32", "detect_image street.jpg, ours torch fp32",
            "evaluation, 3 500x375, batch 2", "network + argmax, onnxruntime int8",
            "detect_image street.jpg, ours onnxruntime fp32", "network + argmax, openvino int8",
            "evaluation, 3 500x375, batch 1, 0 workers, onnxruntime int8",
            "detect_image street.jpg, ours openvino int8", "fastest detect_image: "]  # fmt: skip
    assert all(row in out for row in rows), out
    summary = json.loads((tmp_path / "speed.json").read_text())
    assert all(ours > 0 and original > 0 for _, ours, original in summary["rows"])
    assert 0 < summary["postprocess_peak_bytes"] < 2**30


@pytest.mark.parametrize("size", [(1330, 1330), (700, 1100), (90, 61), (40, 30)])
def test_labels_at_the_image_size_are_the_argmax_of_the_resized_probabilities(size):
    """Computed where the four source pixels disagree only, the labels equal those of the whole
    resized map outside near-ties, when enlarging (and shrinking, where it is the same code)."""
    torch.manual_seed(0)
    coarse = torch.randn(1, 21, 6, 6) * 4
    probs = torch.softmax(F.interpolate(coarse, size=(64, 64), mode="bicubic")[0], dim=0)
    width, height = size
    scale = min(64 / width, 64 / height)
    inner_w, inner_h = int(width * scale), int(height * scale)
    placement = Placement(width, height, (64 - inner_h) // 2, (64 - inner_w) // 2, inner_h, inner_w)
    resized = resize_to_original(probs, placement)
    ours = labels_at_original(probs, placement).numpy()
    assert len(np.unique(ours)) > 3, "a map of few classes tests little"
    assert_labels_agree(ours, class_map(resized).numpy(), resized.permute(1, 2, 0).numpy())


def test_the_class_map_is_argmax_with_its_first_class_on_ties():
    scores = torch.randint(0, 3, (21, 50, 40)).float()  # many exact ties
    assert torch.equal(class_map(scores), scores.argmax(0).to(torch.uint8))
    layout = scores.unsqueeze(0).contiguous(memory_format=torch.channels_last)[0]
    assert torch.equal(class_map(layout), scores.argmax(0).to(torch.uint8))
