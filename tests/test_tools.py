"""Dataset tools: voc_annotation.py, json_to_dataset.py and the demo data generator."""

import hashlib
import json
import random
import shutil

import numpy as np
import pytest
from PIL import Image

import json_to_dataset
import voc_annotation
from tests.conftest import shared_data, write_voc_pair
from utils.data.demo_data import make_demo_dataset


def split_ids(root, split):
    return (root / f"VOC2007/ImageSets/Segmentation/{split}.txt").read_text().split()


def test_splits_follow_the_reference_sampling(voc_root):
    splits = voc_annotation.write_splits(voc_root, trainval_percent=0.8, train_percent=0.75)
    names = sorted(p.stem for p in (voc_root / "VOC2007/SegmentationClass").glob("*.png"))
    random.seed(0)
    trainval = random.sample(range(10), 8)
    train = random.sample(trainval, 6)
    assert splits["trainval"] == [n for i, n in enumerate(names) if i in trainval]
    assert splits["train"] == [n for i, n in enumerate(names) if i in train]
    assert splits["val"] == [n for i, n in enumerate(names) if i in trainval and i not in train]
    assert splits["test"] == [n for i, n in enumerate(names) if i not in trainval]
    for split, ids in splits.items():
        assert split_ids(voc_root, split) == ids


def test_voc_annotation_cli_prints_the_value_table(voc_root, cli):
    code, out, _ = cli(voc_annotation.main, ["--dataset-path", str(voc_root)])
    assert code == 0
    assert "|             255 |" in out and "|               3 |" in out
    assert len(split_ids(voc_root, "train")) == 9 and len(split_ids(voc_root, "val")) == 1


def test_voc_annotation_refuses_0_255_labels_with_exit_code_2(binary_root, cli):
    code, _, err = cli(voc_annotation.main, ["--dataset-path", str(binary_root)])
    assert code == 2
    assert "hold only 0 and 255" in err and "--fix-binary" in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: the labels")


def test_fix_binary_refuses_multi_class_labels(voc_root, cli):
    argv = ["--dataset-path", str(voc_root), "--fix-binary"]
    code, _, err = cli(voc_annotation.main, argv)
    assert code == 2 and "only applies to labels holding just 0 and 255" in err


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: Image.new("RGB", (8, 8)).save(r / "VOC2007/SegmentationClass/b.png"),
         "b.png' is a colour image (mode RGB)"),
        (lambda r: Image.new("L", (9, 8)).save(r / "VOC2007/SegmentationClass/b.png"),
         "b.png' is 9x8 but image"),
        (lambda r: (r / "VOC2007/JPEGImages/b.jpg").unlink(), "1 image file(s) listed"),
    ],
)  # fmt: skip
def test_voc_annotation_names_unusable_labels(binary_root, cli, damage, message):
    damage(binary_root)
    code, _, err = cli(voc_annotation.main, ["--dataset-path", str(binary_root)])
    assert code == 2 and message in err


def test_voc_annotation_refuses_background_only_labels(tmp_path, cli):
    root = tmp_path / "VOCdevkit"
    write_voc_pair(root, "a", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    code, _, err = cli(voc_annotation.main, ["--dataset-path", str(root)])
    assert code == 2 and "only background" in err


def test_voc_annotation_bad_percent_is_a_usage_error(cli):
    code, _, err = cli(voc_annotation.main, ["--train-percent", "90"])
    assert code == 2 and "--train-percent must be between 0 and 1" in err


def test_labelme_example_converts_to_the_expected_png(tmp_path, cli):
    example = shared_data("labelme_example")
    argv = ["--json-dir", str(example), "--jpgs-path", str(tmp_path / "J"),
            "--pngs-path", str(tmp_path / "S"),
            "--classes", "_background_", "cat", "dog"]  # fmt: skip
    code, _, _ = cli(json_to_dataset.main, argv)
    assert code == 0
    ours = Image.open(tmp_path / "S/1.png")
    expected = Image.open(example / "expected/1.png")
    assert ours.mode == "P" and ours.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    assert np.array_equal(np.array(ours), np.array(expected))
    assert Image.open(tmp_path / "J/1.jpg").size == expected.size


def test_labelme_image_path_is_used_without_embedded_data(tmp_path, cli):
    example = shared_data("labelme_example")
    data = json.loads((example / "1.json").read_text())
    data["imageData"] = None
    (tmp_path / "in").mkdir()
    (tmp_path / "in/1.json").write_text(json.dumps(data))
    shutil.copy(example / "1.jpg", tmp_path / "in/1.jpg")
    argv = ["--json-dir", str(tmp_path / "in"), "--jpgs-path", str(tmp_path / "J"),
            "--pngs-path", str(tmp_path / "S"), "--classes", "_background_", "cat"]  # fmt: skip
    assert cli(json_to_dataset.main, argv)[0] == 0
    assert (tmp_path / "J/1.jpg").read_bytes() == (example / "1.jpg").read_bytes()
    expected = np.array(Image.open(example / "expected/1.png"))
    assert np.array_equal(np.array(Image.open(tmp_path / "S/1.png")), expected)


def test_labelme_rectangles_and_circles_are_drawn(tmp_path, cli):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "in/x.png")
    shapes = [
        {"label": "box", "shape_type": "rectangle", "points": [[12, 8], [2, 2]]},
        {"label": "disc", "shape_type": "circle", "points": [[15, 5], [17, 5]]},
    ]
    (tmp_path / "in/x.json").write_text(json.dumps({"imagePath": "x.png", "shapes": shapes}))
    argv = ["--json-dir", str(tmp_path / "in"), "--jpgs-path", str(tmp_path / "J"),
            "--pngs-path", str(tmp_path / "S"),
            "--classes", "_background_", "box", "disc"]  # fmt: skip
    assert cli(json_to_dataset.main, argv)[0] == 0
    label = np.array(Image.open(tmp_path / "S/x.png"))
    assert (label[2:9, 2:13] != 0).all() and label[0, 0] == 0
    assert (label[2:9, 2:13] == 1).sum() > 50 and label[5, 15] == 2 and label[5, 19] == 0


def test_labelme_unknown_class_is_a_clear_error(tmp_path, cli):
    example = shared_data("labelme_example")
    argv = ["--json-dir", str(example), "--jpgs-path", str(tmp_path / "J"),
            "--pngs-path", str(tmp_path / "S"), "--classes", "_background_", "dog"]  # fmt: skip
    code, _, err = cli(json_to_dataset.main, argv)
    assert code == 2 and "labels a shape 'cat', which is not in the class list" in err


def test_demo_data_is_deterministic(tmp_path):
    def digest(root):
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return [(p.relative_to(root), hashlib.md5(p.read_bytes()).hexdigest()) for p in files]

    a = make_demo_dataset(tmp_path / "a", num_images=4, size=(48, 40))
    b = make_demo_dataset(tmp_path / "b", num_images=4, size=(48, 40))
    assert digest(a) == digest(b)
    labels = [np.array(Image.open(p)) for p in (a / "VOC2007/SegmentationClass").glob("*.png")]
    assert set(np.unique(np.concatenate([x.ravel() for x in labels]))) <= {0, 1, 2, 3, 255}
