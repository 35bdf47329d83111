"""Which colour and which name is which class: the original's palette and class names, the
overlay drawing, the legend saved beside pictures, and the table of label value -> class ->
name that training and voc_annotation.py print."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from utils.utils import voc_palette

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip
#: How the medical layout reads its grey labels (see utils.dataloader.UnetDataset.read_pair).
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


def colorize(labels: np.ndarray, colors: Sequence[tuple[int, int, int]]) -> Image.Image:
    """An (H, W) class map in the class colours (values past the palette, the ignore value
    among them, draw white): a palette image converted to RGB by Pillow, ten times faster than
    indexing a colour table in NumPy (20 ms at 1330x1330)."""
    table = np.full((256, 3), 255, dtype=np.uint8)
    table[: len(colors)] = colors
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.putpalette(table.tobytes())
    return image.convert("RGB")


#: The colour share of the original's mix_type 0 blend.
BLEND = 0.7


def overlay(
    image: Image.Image | np.ndarray,
    labels: np.ndarray,
    colors: Sequence[tuple[int, int, int]],
    blend: float = BLEND,
) -> Image.Image:
    """The class colours blended over the image, ``blend`` colour (the original's mix_type 0)."""
    image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    image = image if image.mode == "RGB" else image.convert("RGB")
    return Image.blend(image, colorize(labels, colors), blend)


def draw_labels(
    image: Image.Image | np.ndarray,
    labels: np.ndarray,
    colors: Sequence[tuple[int, int, int]],
    mix_type: int = 0,
    blend: float = BLEND,
) -> Image.Image:
    """A class map drawn over its RGB image as the original's ``mix_type`` says: 0 blends the
    colours in (``blend`` of them), 1 draws the colours only, 2 keeps the image where the class
    is not background."""
    if mix_type == 2:
        return Image.fromarray(np.asarray(image) * (labels != 0)[..., None])
    if mix_type == 1:
        return colorize(labels, colors)
    return overlay(image, labels, colors, blend)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_legend(
    names: Sequence[str], colors: Sequence[tuple[int, int, int]], path: str | Path
) -> Path:
    """``legend.png``: one colour swatch and ``index name`` per class, in the overlay colours."""
    font = _font(16)
    rows = [f"{index}  {name}" for index, name in enumerate(names)]
    width = 56 + max(int(font.getlength(text)) for text in rows) + 12
    legend = Image.new("RGB", (width, 8 + 28 * len(rows)), "white")
    draw = ImageDraw.Draw(legend)
    for row, (text, color) in enumerate(zip(rows, colors, strict=False)):
        top = 8 + 28 * row
        draw.rectangle((8, top, 44, top + 20), fill=tuple(color), outline=(96, 96, 96))
        draw.text((56, top + 1), text, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    legend.save(path)
    return path


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


def enlarge(array: np.ndarray, min_side: int) -> np.ndarray:
    """Scale an (H, W) or (H, W, 3) array up by a whole factor, nearest-neighbour, until its
    short side is at least ``min_side`` (labels keep their values, pixels stay sharp)."""
    factor = max(1, -(-min_side // min(array.shape[:2])))
    return array.repeat(factor, axis=0).repeat(factor, axis=1)


def grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 6) -> np.ndarray:
    """(H, W, 3) uint8 pictures laid out in rows, on white, ``gap`` pixels apart."""
    height = max(tile.shape[0] for row in rows for tile in row)
    width = max(sum(tile.shape[1] for tile in row) + gap * (len(row) - 1) for row in rows)
    canvas = np.full((len(rows) * (height + gap) - gap, width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        left = 0
        for tile in row:
            top = r * (height + gap)
            canvas[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
            left += tile.shape[1] + gap
    return canvas


def comparison_strip(
    image: np.ndarray,
    label: np.ndarray,
    prediction: np.ndarray,
    colors: Sequence[tuple[int, int, int]],
    height: int = 256,
) -> np.ndarray:
    """Image, label and prediction side by side, each in the overlay colours, ``height`` high
    (resized nearest-neighbour, so the class edges stay sharp)."""
    tiles = [
        image,
        np.asarray(overlay(image, label, colors)),
        np.asarray(overlay(image, prediction, colors)),
    ]
    width = round(image.shape[1] * height / image.shape[0])
    tiles = [np.asarray(Image.fromarray(t).resize((width, height), Image.NEAREST)) for t in tiles]
    return grid([tiles])
