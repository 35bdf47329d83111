"""The README's ISBI 2012 recipe, shortened: real cell images, a fixed hold-out, real learning."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import train
from tests.conftest import shared_data

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "isbi2012"


def single_class_miou(root: Path, ids: list[str]) -> float:
    """The held-out mIoU (%) of predicting the majority class everywhere."""
    labels = [np.array(Image.open(root / "Labels" / f"{i}.png").convert("L")) for i in ids]
    share = np.mean(np.concatenate([(label <= 127.5).ravel() for label in labels]))
    return max(share, 1 - share) / 2 * 100  # the other class scores IoU 0


@pytest.mark.slow
def test_brief_isbi_training_beats_the_single_class_level_on_held_out_images(tmp_path):
    root = shared_data("isbi2012_cells")
    val_ids = (RECIPE / "val.txt").read_text().split()
    assert val_ids == [str(i) for i in range(24, 30)]
    floor = single_class_miou(root, val_ids)
    assert 38 < floor < 42
    # The README's recipe at 128x128 for 3 epochs (about a minute and a half here).
    train.main(
        [
            "--dataset-path", str(root), "--dataset-format", "medical", "--num-classes", "2",
            "--model-path", "", "--train-split", str(RECIPE / "train.txt"),
            "--val-split", str(RECIPE / "val.txt"), "--input-shape", "128", "128",
            "--no-freeze-train", "--unfreeze-epoch", "3", "--unfreeze-batch-size", "1",
            "--init-lr", "1e-3", "--no-lr-fit", "--augment", "flip", "--dice-loss",
            "--eval-period", "3", "--save-period", "3", "--num-workers", "0", "--device", "cpu",
            "--save-dir", str(tmp_path),
        ]
    )  # fmt: skip
    miou_file = next(tmp_path.glob("loss_*/epoch_miou.txt"))
    miou = float(miou_file.read_text().split()[-1])
    assert miou > floor + 10, f"held-out mIoU {miou:.1f} vs {floor:.1f} for one class"
