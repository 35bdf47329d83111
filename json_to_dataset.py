"""Convert labelme JSON files into VOC images and palette class-index labels.

For each ``*.json`` in ``--json-dir``: the image (embedded ``imageData`` or the file named by
``imagePath``) goes to ``--jpgs-path/<name>.jpg`` and the shapes, drawn in order (later shapes
on top) as labelme does, go to ``--pngs-path/<name>.png`` with values indexing ``--classes``.
No dependency on the labelme package.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from utils.errors import UserError, exit_on_user_error
from utils.images import voc_palette
from utils.settings.cli import argument_parser

VOC_CLASSES = [
    "_background_", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip


def shape_to_mask(
    size: tuple[int, int], points, shape_type: str | None, line_width: int = 10, point_size: int = 5
) -> np.ndarray:
    """A boolean (H, W) mask of one labelme shape, drawn exactly as labelme draws it."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    xy = [tuple(point) for point in points]
    if shape_type == "circle":
        (cx, cy), (px, py) = xy
        d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif shape_type == "rectangle":
        (x1, y1), (x2, y2) = xy
        draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=1, fill=1)
    elif shape_type in ("line", "linestrip"):
        draw.line(xy=xy, fill=1, width=line_width)
    elif shape_type == "point":
        r, (cx, cy) = point_size, xy[0]
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    else:
        draw.polygon(xy=xy, outline=1, fill=1)
    return np.array(mask, dtype=bool)


def load_labelme_image(json_path: Path, data: dict) -> tuple[Image.Image, bytes]:
    """The annotated image and its encoded bytes, from ``imageData`` or ``imagePath``."""
    if data.get("imageData"):
        raw = base64.b64decode(data["imageData"])
    else:
        image_path = json_path.parent / data.get("imagePath", "")
        if not image_path.is_file():
            raise UserError(
                f"{json_path} has no embedded imageData and its imagePath {image_path} does not "
                "exist; put the image next to the JSON file or save it with image data."
            )
        raw = image_path.read_bytes()
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except OSError as error:
        raise UserError(f"the image of {json_path} cannot be decoded ({error}).") from error
    return image, raw


def labelme_to_label(json_path: Path, data: dict, size: tuple[int, int], classes: list[str]):
    """Class-index (H, W) uint8 label of every shape in ``data``; unknown labels are errors."""
    label = np.zeros((size[1], size[0]), dtype=np.uint8)
    for shape in data.get("shapes", []):
        name = shape["label"]
        if name not in classes:
            raise UserError(
                f"{json_path} labels a shape {name!r}, which is not in the class list; add it to "
                f"--classes (now: {' '.join(classes)})."
            )
        mask = shape_to_mask(size, shape["points"], shape.get("shape_type"))
        label[mask] = classes.index(name)
    return label


def convert(json_path: Path, jpgs_path: Path, pngs_path: Path, classes: list[str]) -> None:
    """Write ``<name>.jpg`` (JPEG bytes copied as they are) and ``<name>.png`` for one file."""
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{json_path} is not a labelme JSON file ({error}).") from error
    image, raw = load_labelme_image(json_path, data)
    label = labelme_to_label(json_path, data, image.size, classes)
    name = json_path.stem
    if image.format == "JPEG":
        (jpgs_path / f"{name}.jpg").write_bytes(raw)  # no second lossy encoding
    else:
        image.convert("RGB").save(jpgs_path / f"{name}.jpg")
    png = Image.fromarray(label, mode="L")
    png.putpalette([c for rgb in voc_palette() for c in rgb])
    png.save(pngs_path / f"{name}.png")


def get_parser() -> argparse.ArgumentParser:
    parser = argument_parser(__doc__)
    parser.add_argument("--json-dir", default="datasets/before", help="folder of labelme JSONs")
    parser.add_argument("--jpgs-path", default="datasets/JPEGImages", help="where images go")
    parser.add_argument(
        "--pngs-path", default="datasets/SegmentationClass", help="where the labels go"
    )
    parser.add_argument(
        "--classes",
        nargs="+",
        default=VOC_CLASSES,
        help="class names in label-value order; the first must be _background_",
    )
    return parser


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.classes[0] != "_background_":
        parser.error("the first of --classes must be _background_ (label value 0)")
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    json_dir = Path(args.json_dir)
    if not json_dir.is_dir():
        raise UserError(f"--json-dir {json_dir} is not a folder; point it at the labelme JSONs.")
    json_paths = sorted(json_dir.glob("*.json"))
    if not json_paths:
        raise UserError(f"{json_dir} holds no .json files; point --json-dir at labelme's output.")
    jpgs_path, pngs_path = Path(args.jpgs_path), Path(args.pngs_path)
    jpgs_path.mkdir(parents=True, exist_ok=True)
    pngs_path.mkdir(parents=True, exist_ok=True)
    for json_path in json_paths:
        convert(json_path, jpgs_path, pngs_path, args.classes)
        print(f"Saved {json_path.stem}.jpg and {json_path.stem}.png")


if __name__ == "__main__":
    main()
