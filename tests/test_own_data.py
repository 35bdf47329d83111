"""A user's own data: shapes in random colours, a class never found named in one line, every
label checked against --num-classes, class names given once, and the small frictions of a
first week (misspelt flags, a folder given as an image, a backbone named)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import get_miou
import predict
import train
import voc_annotation
from tests.conftest import base_argv
from utils.data.classes import CLASSES_FILE
from utils.data.demo_data import make_demo_dataset
from utils.device import Runtime, bf16_note
from utils.utils_metrics import never_found


def test_random_colours_leave_only_the_shape_to_tell_a_class(tmp_path):
    """Each class's mean hue spreads over the whole circle: no colour cue is left."""
    root = make_demo_dataset(tmp_path / "VOCdevkit", 12, size=(96, 72), colours="random")
    hues = {1: [], 2: [], 3: []}
    for label_path in sorted((root / "VOC2007/SegmentationClass").glob("*.png")):
        label = np.asarray(Image.open(label_path))
        image = Image.open(root / "VOC2007/JPEGImages" / f"{label_path.stem}.jpg")
        hue = np.asarray(image.convert("HSV"))[..., 0]
        for class_id, found in hues.items():
            if (label == class_id).sum() > 50:
                found.append(float(np.median(hue[label == class_id])))
    for found in hues.values():
        assert len(found) >= 2 and np.ptp(found) > 60  # of 256: class colours spread 36


def test_a_class_never_found_is_named_with_what_to_try():
    hist = np.array([[90, 5, 0], [30, 0, 0], [2, 0, 40]])  # class 1: labelled, never right
    lines = never_found(hist, ["bg", "rect", "tri"])
    assert len(lines) == 1 and "class 'rect' is barely found (IoU 0.0 on its 30" in lines[0]
    assert "--cls-weights" in lines[0]
    silent = np.array([[90, 0, 0], [30, 0, 0], [0, 0, 0]])  # rect never predicted; tri absent
    (line,) = never_found(silent, ["bg", "rect", "tri"])
    assert "never predicted on its 30 labelled pixels" in line


def test_training_and_get_miou_name_a_class_the_model_never_finds(data_root, tmp_path, cli):
    """One epoch at a learning rate of 1e-9 leaves the model as made: the classes it misses are
    named."""
    argv = base_argv(data_root, tmp_path / "run", "--no-freeze-train", "--unfreeze-epoch", "1",
                     "--init-lr", "1e-9", "--min-lr", "1e-10", "--eval-period", "1")  # fmt: skip
    code, out, err = cli(train.main, argv)
    assert code == 0, err
    assert out.count("is never found") + out.count("is barely found") >= 2
    weights = str(tmp_path / "run/last_epoch_weights.pth")
    code, out, err = cli(get_miou.main, ["--dataset-path", str(data_root), "--model-path", weights,
                                         "--device", "cpu", "--num-workers", "0"])  # fmt: skip
    assert code == 0, err
    assert out.count("is never found") + out.count("is barely found") >= 2


def test_voc_annotation_checks_every_label_against_num_classes(voc_root, cli):
    code, _, err = cli(voc_annotation.main, ["--dataset-path", str(voc_root), "--num-classes", "3"])
    assert code == 2
    assert "holds value 3, but --num-classes 3 allows 0 to 2" in err and "Traceback" not in err


def test_class_names_given_to_voc_annotation_reach_training(voc_root, tmp_path, cli):
    names = ["background", "square", "circle", "triangle"]
    argv = ["--dataset-path", str(voc_root), "--num-classes", "4", "--name-classes", *names]
    code, out, _ = cli(voc_annotation.main, argv)
    assert code == 0 and (voc_root / "VOC2007" / CLASSES_FILE).is_file()
    config, _, _ = train.get_config(base_argv(voc_root, tmp_path / "run"))
    assert config.data.name_classes == names
    config, _, _ = train.get_config([*base_argv(voc_root, tmp_path), "--num-classes", "5"])
    assert config.data.name_classes is None  # 4 names for 5 classes: not used


def test_a_fp32_run_on_a_cpu_with_native_bf16_says_so(monkeypatch):
    import torch

    monkeypatch.setattr("utils.device.cpu_has_native_bf16", lambda: True)
    assert "--precision bf16 trains" in bf16_note(Runtime(torch.device("cpu"), "fp32", False))
    assert bf16_note(Runtime(torch.device("cpu"), "bf16", False)) is None
    monkeypatch.setattr("utils.device.cpu_has_native_bf16", lambda: False)
    assert bf16_note(Runtime(torch.device("cpu"), "fp32", False)) is None


@pytest.mark.parametrize(
    "script, argv, hint",
    [
        (train.main, ["--unfreze-epoch", "3"], "--unfreze-epoch: did you mean --unfreeze-epoch?"),
        (predict.main, ["--mdoe", "fps"], "--mdoe: did you mean --mode?"),
    ],
)
def test_a_misspelt_flag_gets_did_you_mean(script, argv, hint, cli):
    code, _, err = cli(script, argv)
    assert code == 2 and hint in err


def test_a_folder_given_as_an_image_is_refused_before_the_model_loads(tmp_path, cli):
    code, _, err = cli(predict.main, [str(tmp_path), "--model-path", str(tmp_path / "no.pth")])
    assert code == 2 and "is a folder; to segment every image in it, run --mode dir_predict" in err


def test_every_train_label_is_checked_before_the_first_step(tmp_path, cli):
    """A label value past the classes in the last of 40 train labels stops the run at start,
    not at step 16 of the first epoch (the start-up check once read a sample of 32)."""
    root = make_demo_dataset(tmp_path / "VOCdevkit", 40, size=(48, 40))
    ids = (root / "VOC2007/ImageSets/Segmentation/train.txt").read_text().split()
    last = root / f"VOC2007/SegmentationClass/{ids[-1]}.png"
    label = np.asarray(Image.open(last)).copy()
    label[:2, :2] = 5
    Image.fromarray(label).save(last)
    code, out, err = cli(train.main, base_argv(root, tmp_path / "run"))
    assert code == 2 and "Epoch" not in out + err.replace("error:", "")
    assert f"label {last} holds class 5 but num_classes is 4" in err


def test_precision_auto_is_bf16_where_native_and_fp32_elsewhere(monkeypatch):
    from utils.device import resolve_runtime

    monkeypatch.setattr("utils.device.cpu_has_native_bf16", lambda: True)
    assert resolve_runtime("cpu", "auto").precision == "bf16"
    monkeypatch.setattr("utils.device.cpu_has_native_bf16", lambda: False)
    assert resolve_runtime("cpu", "auto").precision == "fp32"


@pytest.mark.slow
def test_the_readmes_cpu_recipe_trains_on_shapes_in_random_colours(tmp_path, cli):
    """recipes/cpu.yaml as the README gives it, two short epochs: ResNet-18, the shapes
    augmentation, and only the last and best weights written."""
    root = make_demo_dataset(tmp_path / "VOCdevkit", 8, size=(96, 72), colours="random")
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "cpu.yaml")
    argv = ["--config", recipe, "--dataset-path", str(root), "--num-classes", "4",
            "--unfreeze-epoch", "2", "--input-shape", "32", "32", "--num-workers", "0",
            "--eval-period", "2", "--device", "cpu",
            "--save-dir", str(tmp_path / "logs")]  # fmt: skip
    code, out, err = cli(train.main, argv)
    assert code == 0, err
    weights = sorted(p.name for p in (tmp_path / "logs").glob("*.pth"))
    assert weights == ["best_epoch_weights.pth", "checkpoint_last.pth", "last_epoch_weights.pth"]
    saved = (tmp_path / "logs" / "config.yaml").read_text()
    assert "backbone: resnet18" in saved and "augment: shapes" in saved
