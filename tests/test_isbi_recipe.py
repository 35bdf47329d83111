"""What the ISBI 2012 recipes are built from: the elastic augmentation, native-resolution crops
and tiles, keeping the best weights by mIoU, and the pixel error."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import get_miou
import train
from utils.data.augment import elastic_deformation, random_crop
from utils.data.datasets import UnetDataset
from utils.data.demo_data import make_demo_dataset
from utils.errors import UserError


def blocks(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image of 8x8-pixel blocks of grey 40 or 200, and its label: 1 where it is 200."""
    rng = np.random.default_rng(0)
    coarse = rng.random((size // 8, size // 8)) > 0.5
    bright = np.kron(coarse, np.ones((8, 8), dtype=bool))
    image = np.where(bright, 200, 40).astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=2), bright.astype(np.uint8)


def test_the_elastic_deformation_keeps_the_label_on_its_pixels():
    image, label = blocks()
    moved, moved_label = elastic_deformation(image, label, np.random.default_rng(3))
    assert not np.array_equal(moved_label, label)  # it deforms
    pure = (moved[..., 0] == 40) | (moved[..., 0] == 200)  # away from blended block edges
    assert pure.mean() > 0.6
    assert np.array_equal(moved_label[pure], (moved[..., 0][pure] == 200).astype(np.uint8))


def test_the_elastic_deformation_is_seeded_and_keeps_the_class_values():
    image, label = blocks()
    label = label * 2  # classes 0 and 2
    label[:4] = 255  # and the ignore value
    first = elastic_deformation(image, label, np.random.default_rng(7))
    again = elastic_deformation(image, label, np.random.default_rng(7))
    other = elastic_deformation(image, label, np.random.default_rng(8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])
    assert set(np.unique(first[1])) <= {0, 2, 255}


@pytest.fixture
def cells(tmp_path):
    """A medical-layout data set of four 64x64 images whose label follows the image."""
    root = tmp_path / "cells"
    for folder in ("Images", "Labels", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for i in range(4):
        image, label = blocks(64)
        Image.fromarray(np.roll(image, 8 * i, axis=1)).save(root / f"Images/{i}.png")
        dark = np.roll(label, 8 * i, axis=1) == 0  # class 1 (membrane) where the label <= 127
        Image.fromarray(np.where(dark, 0, 255).astype(np.uint8)).save(root / f"Labels/{i}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("0\n1\n2\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("3\n")
    return root


def test_elastic_samples_stay_aligned_through_the_whole_training_transform(cells):
    dataset = UnetDataset(["0", "1", "2"], (32, 32), 2, True, cells, "medical", seed=1,
                          augment="elastic")  # fmt: skip
    for epoch in range(3):
        image, label = dataset[(epoch, 0)]
        assert image.shape == (3, 32, 32) and label.shape == (32, 32)
        assert set(label.unique().tolist()) <= {0, 1}
        grey = image[0].float()
        clear = (grey < 60) | (grey > 180)  # brightness/contrast jitter is mild
        assert torch.equal(label[clear], (grey[clear] < 128).long())


def test_crops_are_native_resolution_windows_and_too_large_ones_name_the_image(cells):
    dataset = UnetDataset(["0"], (32, 48), 2, True, cells, "medical", augment="none", crop=True)
    image, label = dataset[(0, 0)]
    assert image.shape == (3, 32, 48)
    full = np.array(Image.open(cells / "Images/0.png").convert("RGB"))
    window = image.permute(1, 2, 0).numpy()
    assert any(np.array_equal(window, full[t : t + 32, x : x + 48])
               for t in range(33) for x in range(17))  # fmt: skip
    with pytest.raises(UserError, match=r"--train-crop 80 48 is larger than image '.*0\.png' "
                                        r"\(64x64\); crop at most 64 48"):  # fmt: skip
        random_crop(full, full[..., 0], (80, 48), np.random.default_rng(0), cells / "Images/0.png")


def recipe(cells, tmp_path, *extra):
    return ["--dataset-path", str(cells), "--dataset-format", "medical", "--num-classes", "2",
            "--model-path", "", "--input-shape", "32", "32", "--no-freeze-train",
            "--unfreeze-batch-size", "1", "--num-workers", "0", "--device", "cpu",
            "--init-lr", "1e-3", "--no-lr-fit", "--save-dir", str(tmp_path / "logs"),
            *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--tile", "8"], "--tile 8 is smaller than the vgg network's input multiple 16; use"),
     (["--save-best-by", "miou", "--no-eval-flag"],
      "save_best_by (--save-best-by) miou needs the in-training"),
     (["--train-crop", "40", "40"], "input size 40x40 does not fit the vgg backbone")],
)  # fmt: skip
def test_recipe_flags_that_cannot_work_are_refused_before_training(cells, tmp_path, cli, extra,
                                                                   message):  # fmt: skip
    code, out, err = cli(train.main, recipe(cells, tmp_path, "--unfreeze-epoch", "1", *extra))
    assert code == 2 and message in err and "Epoch" not in out


def test_tiles_evaluate_in_training_as_get_miou_does_and_the_pixel_error_is_reported(
    cells, tmp_path, cli
):
    argv = recipe(cells, tmp_path, "--unfreeze-epoch", "1", "--eval-period", "1",
                  "--train-crop", "32", "32", "--tile", "32", "--stride", "16")  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    saved = json.loads((tmp_path / "logs/last_epoch_weights.json").read_text())
    assert (saved["tile"], saved["stride"], saved["input_shape"]) == (32, 16, [32, 32])
    in_training = float(next((tmp_path / "logs").glob("loss_*/epoch_miou.txt")).read_text())
    out = tmp_path / "miou_out"
    weights = tmp_path / "logs/last_epoch_weights.pth"
    argv = ["--dataset-path", str(cells), "--model-path", str(weights), "--device", "cpu",
            "--miou-out-path", str(out)]  # fmt: skip
    code, stdout, _ = cli(get_miou.main, argv)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mIoU"] * 100 == pytest.approx(in_training, abs=1e-9)
    (cells_right, cells_missed), (cells_added, _) = metrics["confusion_matrix"]
    wrong = cells_missed + cells_added  # the challenge's F-score of the cells, not the accuracy
    assert metrics["class_map_pixel_error"] == pytest.approx(wrong / (2 * cells_right + wrong))
    assert f"Pixel error: {metrics['pixel_error']:.4f}" in stdout
    # the challenge scores each slice's cell probability at its best threshold: the class map is
    # the probability above 0.5 (2 classes), which 8 bits and the resize's rounding keep on all
    # but a few pixels
    assert metrics["pixel_error_threshold"] in [i / 10 for i in range(11)]
    assert metrics["pixel_error"] <= metrics["class_map_pixel_error"] + 0.002
    for name in (cells / "ImageSets/Segmentation/val.txt").read_text().split():
        scores = np.array(Image.open(out / "cell-probabilities" / f"{name}.png"))
        labels = np.array(Image.open(out / "detection-results" / f"{name}.png"))
        assert np.mean((scores >= 128) != (labels == 0)) < 0.002
    # without the probability maps (an older run's predictions), the class maps' errors
    shutil.rmtree(out / "cell-probabilities")
    code, stdout, _ = cli(get_miou.main, [*argv, "--miou-mode", "2"])
    again = json.loads((out / "metrics.json").read_text())
    assert code == 0 and "pixel_error_threshold" not in again
    assert (
        again["pixel_error"] == again["class_map_pixel_error"] == metrics["class_map_pixel_error"]
    )
    assert "of the class maps)" in stdout


def test_save_augmented_draws_the_samples_and_trains_nothing(cells, tmp_path, cli):
    argv = recipe(cells, tmp_path, "--augment", "elastic", "--save-augmented", "5")
    code, out, _ = cli(train.main, argv)
    assert code == 0 and "Saved 5 augmented training samples" in out
    picture = Image.open(tmp_path / "logs/augmented.png")
    assert picture.width > 2 * 32 and picture.height >= 4 * 32
    assert not list((tmp_path / "logs").glob("*.pth"))


def test_elastic_augmentation_keeps_the_voc_classes_and_their_ignore_border(tmp_path):
    root = make_demo_dataset(tmp_path / "VOCdevkit", 4, size=(48, 40))
    dataset = UnetDataset(["0000", "0001"], (32, 32), 4, True, root, augment="elastic")
    image, label = dataset[(0, 1)]
    assert image.shape == (3, 32, 32)
    assert 4 in label.unique().tolist()  # the 255 border, as the ignore index
    assert set(label.unique().tolist()) <= {0, 1, 2, 3, 4}


def test_without_tiles_the_in_training_miou_scores_whole_images_as_the_predictor_does(tmp_path):
    from nets.unet import Unet
    from nets.unet_training import weights_init
    from utils.device import Runtime, prefers_channels_last
    from utils.inference.pipeline import InferencePipeline
    from utils.settings.recipes import resolve_config
    from utils.training.build import build_data
    from utils.training.epochs import evaluate_miou
    from utils.utils_metrics import ConfusionMatrix

    root = make_demo_dataset(tmp_path / "VOCdevkit", 10, size=(80, 56))
    config = resolve_config({"dataset_path": str(root), "num_classes": 4, "input_shape": [32, 32]})
    train_set, val_set = build_data(config.data, seed=0, say=lambda *_: None)
    assert not train_set.crop and train_set.augment == "reference"  # whole resized images
    torch.manual_seed(0)
    model = Unet(num_classes=4).eval()
    weights_init(model, "kaiming")
    cpu = torch.device("cpu")
    runtime = Runtime(cpu, "fp32", prefers_channels_last(cpu))
    model = runtime.prepare(model)
    expected = ConfusionMatrix(4)
    whole = InferencePipeline(model, (32, 32), runtime)
    for index in range(len(val_set)):
        image, label = val_set.read_pair(index)
        expected.update(label, whole.labels(image))
    assert np.array_equal(evaluate_miou(model, val_set, runtime).hist, expected.hist)
    tiled = evaluate_miou(model, val_set, runtime, tile=32, stride=16)
    assert not np.array_equal(tiled.hist, expected.hist)  # --tile would change it
