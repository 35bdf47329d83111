"""The split files of a VOC data set, written as the original's voc_annotation.py does."""

from __future__ import annotations

import random
from pathlib import Path

from utils.data.datasets import DatasetLayout, explain_dataset_path
from utils.errors import UserError

SPLITS = ("trainval", "train", "val", "test")


def list_labels(dataset_path: str | Path) -> list[str]:
    """The ids of ``SegmentationClass/*.png``, sorted so the split is the same on every machine."""
    folder = DatasetLayout.of(dataset_path).labels
    if not folder.is_dir():
        why = explain_dataset_path(dataset_path, missing=folder)
        raise UserError(f"the label folder {folder} is missing; {why}")
    names = sorted(p.stem for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not names:
        raise UserError(f"{folder} holds no .png labels; labels must be PNG files.")
    return names


def write_splits(
    dataset_path: str | Path,
    trainval_percent: float = 1.0,
    train_percent: float = 0.9,
    seed: int = 0,
    write: bool = True,
) -> dict[str, list[str]]:
    """Split the labelled ids with the reference's sampling and write the four split files
    (unless ``write`` is off)."""
    names = list_labels(dataset_path)
    num = len(names)
    tv = int(num * trainval_percent)
    tr = int(tv * train_percent)
    random.seed(seed)
    trainval = random.sample(range(num), tv)
    train = set(random.sample(trainval, tr))
    trainval = set(trainval)
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    for i, name in enumerate(names):
        if i in trainval:
            splits["trainval"].append(name)
            splits["train" if i in train else "val"].append(name)
        else:
            splits["test"].append(name)
    if not write:
        return splits
    out = DatasetLayout.of(dataset_path).splits
    out.mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        (out / f"{split}.txt").write_text("".join(f"{name}\n" for name in ids))
    return splits
