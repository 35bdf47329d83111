"""What a user sees: which colour and label value is which class, TensorBoard worth opening,
pictures big enough to judge, logs that suit a file, and the messages a newcomer met."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import get_miou
import predict
import train
import voc_annotation
from tests.conftest import TRAINED_NAMES, base_argv, shared_data
from utils.data.classes import MEDICAL_RULE, class_colors
from utils.data.demo_data import make_demo_dataset
from utils.drawing import draw_legend
from utils.settings.recipes import read_config_file

ROOT = Path(__file__).resolve().parents[1]
NAMES = TRAINED_NAMES


def test_voc_annotation_decodes_every_image_and_names_a_truncated_one(binary_root, cli):
    image = binary_root / "VOC2007/JPEGImages/b.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), np.uint8)).save(image)
    image.write_bytes(image.read_bytes()[:-40])  # the header is fine, the pixels are cut short
    code, _, err = cli(voc_annotation.main, ["--dataset-path", str(binary_root), "--fix-binary"])
    assert code == 2 and "b.jpg' cannot be read (image file is truncated" in err


@pytest.mark.parametrize(
    ("main", "extra"), [(train.main, ["--device", "cpu"]), (voc_annotation.main, [])],
    ids=["train", "voc_annotation"],
)  # fmt: skip
def test_a_dataset_path_above_vocdevkit_is_pointed_at_vocdevkit(voc_root, cli, main, extra):
    parent = voc_root.parent  # voc_root is .../VOCdevkit
    code, _, err = cli(main, ["--dataset-path", str(parent), *extra])
    assert code == 2
    assert f"--dataset-path '{parent}' holds VOCdevkit/; point it at '{voc_root}'." in err


def test_voc_annotation_prints_which_label_value_is_which_class(voc_root, cli):
    code, out, _ = cli(voc_annotation.main, ["--dataset-path", str(voc_root),
                                             "--name-classes", *NAMES])  # fmt: skip
    assert code == 0
    assert "label value -> class -> name, share of all pixels" in out
    for value, name in enumerate(NAMES):
        assert f"label {value:<3} -> class {value:<3} {name:<16}" in out
    assert "label 255 -> ignored (border)" in out
    code, _, err = cli(voc_annotation.main, ["--dataset-path", str(voc_root),
                                             "--name-classes", "bg", "square"])  # fmt: skip
    assert code == 2 and "the labels hold label value 3, but --name-classes names only 2" in err


def test_fix_binary_says_which_value_becomes_which_class(binary_root, cli):
    argv = ["--dataset-path", str(binary_root), "--fix-binary", "--name-classes", "sky", "cell"]
    code, out, _ = cli(voc_annotation.main, argv)
    assert code == 0
    assert "label 255 becomes class 1 (cell), the object; label 0 stays class 0 (sky)" in out
    assert "label 1   -> class 1   cell" in out and "label 0   -> class 0   sky" in out


def test_training_prints_the_class_mapping_once(data_root, tmp_path, cli):
    argv = base_argv(data_root, tmp_path, "--freeze-epoch", "1", "--unfreeze-epoch", "2",
                     "--no-eval-flag", "--name-classes", *NAMES)  # fmt: skip
    code, out, _ = cli(train.main, argv)
    assert code == 0 and out.count("label value -> class -> name") == 1  # not again per phase
    assert "label 2   -> class 2   circle" in out


def test_the_medical_layout_says_which_brightness_is_class_1(tmp_path, cli):
    root = tmp_path / "cells"
    for folder in ("Images", "Labels", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    label = np.full((32, 32), 255, np.uint8)
    label[:8] = 0  # a quarter dark: the membranes
    for i in range(2):
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / f"Images/{i}.png")
        Image.fromarray(label).save(root / f"Labels/{i}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("0\n1\n")
    argv = base_argv(root, tmp_path / "logs", "--no-freeze-train", "--unfreeze-epoch", "1",
                     "--dataset-format", "medical", "--num-classes", "2",
                     "--name-classes", "cell", "membrane")  # fmt: skip
    code, out, _ = cli(train.main, argv)
    assert code == 0
    assert "label <= 127.5 (dark)  -> class 1 membrane          25.00%" in out
    assert "label > 127.5 (light)  -> class 0 cell              75.00%" in out


def test_the_isbi_recipes_name_the_dark_membranes_class_1():
    assert MEDICAL_RULE[1].endswith("(dark)")
    for recipe in ("cpu", "gpu"):
        settings = read_config_file(ROOT / f"recipes/isbi2012/{recipe}.yaml")
        assert settings["name_classes"] == ["cell", "membrane"]  # class 1: membrane
    label = np.array(Image.open(shared_data("isbi2012_cells", "Labels", "0.png")).convert("L"))
    assert (label <= 127.5).mean() < 0.5  # the dark pixels are the thin membranes


def test_predict_and_get_miou_draw_a_legend_of_the_training_names(trained, tmp_path, cli):
    root, logs = trained
    weights = logs / "last_epoch_weights.pth"
    expected = tmp_path / "expected.png"
    draw_legend(NAMES, class_colors(4), expected)
    argv = ["--mode", "dir_predict", "--dir-origin-path", str(root / "VOC2007/JPEGImages"),
            "--dir-save-path", str(tmp_path / "out"), "--model-path", str(weights),
            "--device", "cpu"]  # fmt: skip
    code, out, _ = cli(predict.main, argv)
    assert code == 0 and "which colour is which class" in out
    expected_pixels = np.array(Image.open(expected))
    assert np.array_equal(np.array(Image.open(tmp_path / "out/legend.png")), expected_pixels)
    argv = ["--dataset-path", str(root), "--model-path", str(weights), "--device", "cpu",
            "--miou-out-path", str(tmp_path / "miou")]  # fmt: skip
    assert cli(get_miou.main, argv)[0] == 0
    assert np.array_equal(np.array(Image.open(tmp_path / "miou/legend.png")), expected_pixels)
    draw_legend(["a", "b", "c", "d"], class_colors(4), tmp_path / "other.png")
    assert not np.array_equal(np.array(Image.open(tmp_path / "other.png")), expected_pixels)


def test_tensorboard_holds_lr_each_class_iou_and_val_pictures(trained):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    _, logs = trained
    events = accumulator.EventAccumulator(str(next(logs.glob("loss_*"))),
                                          size_guidance={"images": 0})  # fmt: skip
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss", "val_loss", "lr", "miou"} <= scalars
    assert {f"iou/{name}" for name in NAMES} & scalars  # each class present in val has a tag
    assert [e.step for e in events.Scalars("lr")] == [1, 2]
    pictures = events.Images("val_samples")
    assert [p.step for p in pictures] == [1, 2] and pictures[0].width > pictures[0].height


def test_the_curves_keep_their_legends_and_axis_labels(trained):
    from utils.training.log import TrainingLog

    _, logs = trained
    history = torch.load(logs / "checkpoint_last.pth", weights_only=True)["history"]
    log = TrainingLog(logs / "replot", history)
    for figure, ylabel in ((log.loss_figure(), "Loss"), (log.miou_figure(), "mIoU (%)")):
        axes = figure.axes[0]
        assert axes.get_xlabel() == "Epoch" and axes.get_ylabel() == ylabel
        assert axes.get_legend() is not None and axes.get_legend().get_texts()
    log.close()


def test_augmented_samples_are_drawn_at_least_256_pixels_a_side(data_root, tmp_path, cli):
    argv = base_argv(data_root, tmp_path, "--save-augmented", "3")  # 32x32 inputs
    assert cli(train.main, argv)[0] == 0
    picture = np.array(Image.open(tmp_path / "augmented.png"))
    # two samples (image, labels) a row: 4 tiles of 256 and 3 gaps; two rows for 3 samples
    assert picture.shape == (2 * 256 + 6, 4 * 256 + 3 * 6, 3)


@pytest.mark.slow
def test_a_piped_run_logs_whole_lines_without_carriage_returns(data_root, tmp_path):
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "2",
                     "--eval-period", "1")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("Epoch 2/2: 4/4 [") and "total_loss=" in line for line in lines)
    assert any(line.startswith("Validation: 2/2 [") for line in lines)
    assert "Epoch:2/2\nTotal Loss: " in result.stdout  # the epoch summary as it was


def test_the_newcomers_messages(data_root, tmp_path, cli, monkeypatch):
    assert "--num-classes 4" not in predict.get_parser().format_help()
    root = make_demo_dataset(tmp_path / "VOCdevkit", 6, size=(48, 40))
    assert cli(voc_annotation.main, ["--dataset-path", str(root), "--train-percent", "1"])[0] == 0
    argv = base_argv(root, tmp_path / "logs", "--no-freeze-train", "--unfreeze-epoch", "1")
    code, out, _ = cli(train.main, argv)
    assert code == 0 and "best_epoch_weights.pth follows the train loss" in out
    assert "Save best model to best_epoch_weights.pth (by train loss)" in out
    assert "(by val_loss)" not in out


def test_make_test_runs_only_the_tests_and_make_check_adds_ruff():
    def recipe(target: str) -> str:
        return subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout  # fmt: skip

    assert "ruff" not in recipe("test") and '-m "not slow"' in recipe("test")
    assert " -n 2 " in recipe("test")  # two processes share the cores
    # pytest's own numbered folder, which it cleans (a run of our own kept 4 GB when it failed)
    assert "basetemp" not in recipe("test") + recipe("check")
    check = recipe("check")
    assert "ruff check" in check and "-m pytest -n 2" in check
    assert "not slow" not in check
    assert "make check" in (ROOT / ".ci/run").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in subprocess.run(
        ["make", "-n", "venv", "TORCH=cpu", "VENV=/nonexistent/venv"], cwd=ROOT,
        capture_output=True, text=True, check=True).stdout  # fmt: skip


def test_the_legend_colours_are_the_overlay_colours(tmp_path):
    path = draw_legend(["a", "b", "c"], class_colors(3), tmp_path / "legend.png")
    legend = np.array(Image.open(path))
    for row, colour in enumerate(class_colors(3)):
        assert tuple(legend[8 + 28 * row + 10, 20]) == colour  # the middle of each swatch


def test_too_little_disk_for_the_tests_is_one_sentence_before_the_first():
    from tests.conftest import NEEDED_GB, free_space_problem

    folder = Path("/tmp/pytest-of-x/pytest-3")
    assert free_space_problem(folder, NEEDED_GB * 2**30) is None
    problem = free_space_problem(folder, 98 * 2**20)
    assert problem.startswith(f"the tests need about {NEEDED_GB} GB free in {folder}, which has")
    assert "0.1 GB" in problem and "--basetemp" in problem
