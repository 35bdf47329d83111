"""Which name and which colour is which class: the original's class names and palette, the
classes file a data set keeps, and the table of label value -> class -> name that training and
voc_annotation.py print."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.images import voc_palette

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip
#: How the medical layout reads its grey labels (see utils.data.datasets.UnetDataset.read_pair).
MEDICAL_RULE = {1: "label <= 127.5 (dark)", 0: "label > 127.5 (light)"}


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """The original's palette: VOC colours up to 21 classes, evenly spaced hues beyond."""
    if num_classes <= 21:
        return voc_palette(21)[:num_classes]
    hsv = [(x / num_classes, 1.0, 1.0) for x in range(num_classes)]
    rgb = [colorsys.hsv_to_rgb(*x) for x in hsv]
    return [(int(r * 255), int(g * 255), int(b * 255)) for r, g, b in rgb]


def default_class_names(num_classes: int) -> list[str]:
    """The 21 VOC names for 21 classes, else ``class_0``, ``class_1``, ..."""
    return VOC_CLASSES if num_classes == 21 else [f"class_{i}" for i in range(num_classes)]


#: Written by voc_annotation.py beside JPEGImages/: one class name a line, in label-value
#: order; train.py takes its names when --name-classes is not given.
CLASSES_FILE = "classes.txt"


def write_classes_file(folder: Path, names: Sequence[str], values: Sequence[int]) -> Path:
    """``<folder>/classes.txt``: the class names, and in a comment the label values found."""
    path = Path(folder) / CLASSES_FILE
    found = ", ".join(map(str, values))
    header = (
        "# written by voc_annotation.py: one class name a line, for label values 0, 1, ...; "
        f"train.py reads it.\n# label values found: {found}\n"
    )
    path.write_text(header + "".join(f"{name}\n" for name in names))
    return path


def read_classes_file(folder: Path) -> list[str] | None:
    """The names of ``<folder>/classes.txt``, or None where there is no such file."""
    path = Path(folder) / CLASSES_FILE
    if not path.is_file():
        return None
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def mapping_lines(
    counts: np.ndarray, names: Sequence[str], dataset_format: str = "voc"
) -> list[str]:
    """Label value -> class index -> name, with each one's share of the counted pixels.

    ``counts``: pixels per raw label value (256 bins) for the VOC layout, where the value is
    the class and 255 is ignored; for the medical layout, pixels per class (2 bins), which the
    label's brightness decides.
    """
    total = max(int(counts.sum()), 1)
    lines = []
    if dataset_format == "medical":
        for index in (1, 0):
            share = 100 * counts[index] / total
            lines.append(
                f"  {MEDICAL_RULE[index]:<22} -> class {index} {names[index]:<16} {share:6.2f}%"
            )
        return lines
    for value in np.flatnonzero(counts):
        share = f"{100 * counts[value] / total:6.2f}%"
        if value < len(names):
            lines.append(f"  label {value:<3} -> class {value:<3} {names[value]:<16} {share}")
        else:
            what = "ignored (border)" if value == 255 else "past the last class"
            lines.append(f"  label {value:<3} -> {what:<26} {share}")
    absent = [f"{i} {name}" for i, name in enumerate(names) if i >= 256 or not counts[i]]
    if absent:
        lines.append(f"  no pixels of class {', '.join(absent)}")
    return lines
