"""The U-Net paper's border-weighted cross entropy (``--loss border_ce``): the weight map
against its formula, its effect on the loss, the map moving with its label through every
augmentation, and the one-sentence refusals."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import train
from nets.losses import SegmentationLoss
from utils.data.augment import AUGMENTATIONS
from utils.data.border_weights import SCALE, SIGMA, W0, border_weight_map, dequantized
from utils.data.datasets import UnetDataset, unet_dataset_collate


def two_cells(gap: int = 2) -> np.ndarray:
    """Two 20x20 cells, ``gap`` pixels apart, and a third far away, on a 64x96 mask."""
    objects = np.zeros((64, 96), dtype=bool)
    objects[10:30, 10:30] = True
    objects[10:30, 30 + gap : 50 + gap] = True
    objects[40:60, 76:92] = True
    return objects


def brute_force(objects: np.ndarray) -> np.ndarray:
    """The paper's formula with every object's distance over the whole image."""
    regions, count = ndimage.label(objects)
    distances = np.sort(
        np.stack([ndimage.distance_transform_edt(regions != i) for i in range(1, count + 1)]),
        axis=0,
    )
    weights = 1 + W0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * SIGMA**2))
    return np.where(objects, 1.0, weights)


def test_the_weight_map_is_the_papers_formula():
    objects = two_cells()
    weights = border_weight_map(objects)
    # left out past 4 sigma of an object's box: a weight of at most w0 exp(-8) above 1
    assert np.abs(weights - brute_force(objects)).max() <= W0 * math.exp(-8) + 1e-5
    # in the 2-pixel gap: 1 and 2 pixels from the two cells
    assert weights[20, 30] == pytest.approx(1 + W0 * math.exp(-(3**2) / (2 * SIGMA**2)), rel=1e-5)
    assert weights[objects].tolist() == [1.0] * int(objects.sum())
    assert weights[0, 95] == pytest.approx(1.0, abs=1e-3)  # far from every pair of cells


def test_the_border_ce_weighs_errors_between_touching_cells_above_those_far_from_them():
    objects = two_cells()
    labels = torch.from_numpy(np.where(objects, 0, 1)).long()[None]  # cells are class 0
    weights = torch.from_numpy(border_weight_map(objects))[None]
    criterion = SegmentationLoss(2, terms=["border_ce"])
    plain = SegmentationLoss(2, terms=["ce"])

    def wrong_at(rows, cols) -> torch.Tensor:
        logits = torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float() * 8
        logits[0, :, rows, cols] = logits[0, :, rows, cols].flip(0)  # those pixels wrong
        return logits

    in_gap, far = wrong_at(slice(10, 30), slice(30, 32)), wrong_at(slice(0, 4), slice(60, 70))
    assert plain(in_gap, labels).item() == pytest.approx(plain(far, labels).item(), rel=1e-4)
    assert criterion(in_gap, labels, weights) > 3 * criterion(far, labels, weights)
    # with a flat map it is the plain cross entropy
    flat = torch.ones_like(weights)
    assert criterion(in_gap, labels, flat).item() == pytest.approx(plain(in_gap, labels).item())


@pytest.fixture
def cells(tmp_path):
    """A medical layout of three 64x64 images: light cells between dark membranes."""
    root = tmp_path / "cells"
    for folder in ("Images", "Labels", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        label = np.full((64, 64), 255, dtype=np.uint8)
        label[:, rng.integers(8, 56, 3)] = 0  # membranes: whole dark lines
        label[rng.integers(8, 56, 3), :] = 0
        texture = rng.integers(0, 40, (64, 64))
        image = np.clip(label.astype(int) * 0.6 + 40 + texture, 0, 255).astype(np.uint8)
        Image.fromarray(image).convert("RGB").save(root / f"Images/{i}.png")
        Image.fromarray(label).save(root / f"Labels/{i}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("0\n1\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("2\n")
    return root


@pytest.mark.parametrize("augment", list(AUGMENTATIONS))
def test_the_weight_map_moves_with_its_label_through_every_augmentation(cells, augment):
    dataset = UnetDataset(["0", "1"], (32, 32), 2, True, cells, "medical", seed=3,
                          augment=augment, border_weights=True)  # fmt: skip
    expected = np.asarray(border_weight_map(dataset.read_pair(0)[1] == 0))
    assert np.array_equal(dataset.border_maps[0], np.rint(expected * SCALE).astype(np.uint8))
    dataset.border_maps = [dataset.read_pair(i)[1] + 1 for i in range(2)]  # labels as maps
    for epoch in range(3):
        image, label, weights = dataset[(epoch, 1)]
        moved = weights.long() - 1  # where the label went; -1 where augmentation padded
        assert torch.equal(moved[moved >= 0], label[moved >= 0].long())
    batch = unet_dataset_collate([dataset[(0, 0)], dataset[(0, 1)]])
    assert [tuple(t.shape) for t in batch] == [(2, 3, 32, 32), (2, 32, 32), (2, 32, 32)]


def test_padding_weighs_nothing(cells):
    # 64x64 images letterboxed into 32x48: 8 columns of padding on each side
    dataset = UnetDataset(["0"], (32, 48), 2, True, cells, "medical", augment="none",
                          border_weights=True)  # fmt: skip
    _, label, maps = dataset[(0, 0)]
    assert maps[:, :8].eq(0).all() and maps[:, -8:].eq(0).all() and maps[:, 8:-8].ge(SCALE).all()
    logits = torch.zeros(1, 2, 32, 48)
    logits[0, 1, :, :8] = 50  # every padded pixel wrong, and badly
    criterion = SegmentationLoss(2, terms=["border_ce"])
    assert criterion(logits, label[None].long(), dequantized(maps[None])).item() == pytest.approx(
        math.log(2), rel=1e-5
    )  # the uniform prediction's loss elsewhere


def border_argv(cells, tmp_path, *extra) -> list[str]:
    return ["--dataset-path", str(cells), "--dataset-format", "medical", "--num-classes", "2",
            "--model-path", "", "--input-shape", "32", "32", "--no-freeze-train",
            "--unfreeze-epoch", "1", "--unfreeze-batch-size", "2", "--num-workers", "0",
            "--device", "cpu", "--save-dir", str(tmp_path / "logs"), "--loss", "border_ce",
            "dice", *extra]  # fmt: skip


def test_border_ce_trains(cells, tmp_path, cli):
    code, out, err = cli(train.main, border_argv(cells, tmp_path))
    assert code == 0 and "Epoch:1/1" in out, err


def test_border_ce_refuses_more_than_two_classes(cells, tmp_path, cli):
    code, out, err = cli(train.main, border_argv(cells, tmp_path, "--num-classes", "3"))
    assert code == 2 and "border_ce loss weighs the borders" in err
    assert "num_classes (--num-classes) is 3" in err and "Epoch" not in out


def test_border_ce_refuses_a_grey_label_naming_it(cells, tmp_path, cli):
    grey = np.asarray(Image.open(cells / "Labels/1.png")).copy()
    grey[grey == 0] = 60  # antialiased, or saved as JPEG: no longer two values
    grey[0, 0] = 0
    Image.fromarray(grey).save(cells / "Labels/1.png")
    code, out, err = cli(train.main, border_argv(cells, tmp_path))
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after the progress line of the maps computed
    assert last.startswith(
        f"error: label {cells / 'Labels/1.png'} holds 3 grey levels (0, 60, 255)"
    )
