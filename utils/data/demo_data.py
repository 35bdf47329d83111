"""A small synthetic VOC-layout data set: shapes on textured backgrounds.

Deterministic for a seed, a few seconds to make, and learnable in minutes on a CPU, so
``make demo`` and the tests train on real files without any download. By default each class
keeps a hue of its own (``--colours class``: quick to learn); with ``--colours random`` every
shape takes any colour, so that only its shape tells its class, as in users' data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from utils.data.splits import write_splits
from utils.images import voc_palette
from utils.settings.cli import argument_parser

CLASSES = ["background", "square", "circle", "triangle"]
#: Base hue (0..255 scale) per shape; each shape's colour varies around it.
HUES = {1: 0, 2: 85, 3: 170}


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random colour field with grain: texture that is neither flat nor a shape."""
    coarse = rng.integers(40, 216, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    field = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    grain = rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(field) + grain, 0, 255).astype(np.uint8))


#: How shapes are coloured: a hue per class, or any hue (only the shape tells the class).
COLOURS = ("class", "random")


def _shape_color(rng: np.random.Generator, class_id: int, colours: str) -> tuple[int, int, int]:
    if colours == "random":
        hue = int(rng.integers(0, 256))
    else:
        hue = (HUES[class_id] + int(rng.integers(-18, 19))) % 256
    hsv = np.array([[[hue, rng.integers(170, 256), rng.integers(150, 256)]]], dtype=np.uint8)
    return tuple(int(c) for c in Image.fromarray(hsv, "HSV").convert("RGB").getpixel((0, 0)))


def make_sample(
    rng: np.random.Generator, width: int, height: int, colours: str = "class"
) -> tuple[Image.Image, Image.Image]:
    """One image with 1-4 shapes and its palette label (255 on a thin border, as in VOC)."""
    image = _background(rng, width, height)
    label = Image.new("L", (width, height), 0)
    draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
    for _ in range(int(rng.integers(1, 5))):
        class_id = int(rng.integers(1, len(CLASSES)))
        r = int(rng.integers(min(width, height) // 8, min(width, height) // 4))
        cx, cy = int(rng.integers(r, width - r)), int(rng.integers(r, height - r))
        color = _shape_color(rng, class_id, colours)
        if class_id == 1:
            box = [cx - r, cy - r, cx + r, cy + r]
            draw_image.rectangle(box, fill=color)
            draw_label.rectangle(box, fill=class_id, outline=255, width=2)
        elif class_id == 2:
            box = [cx - r, cy - r, cx + r, cy + r]
            draw_image.ellipse(box, fill=color)
            draw_label.ellipse(box, fill=class_id, outline=255, width=2)
        else:
            points = [(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)]
            draw_image.polygon(points, fill=color)
            draw_label.polygon(points, fill=class_id, outline=255, width=2)
    label = label.convert("P")
    label.putpalette([c for rgb in voc_palette() for c in rgb])
    return image.filter(ImageFilter.SMOOTH), label


def make_demo_dataset(
    root: str | Path,
    num_images: int = 60,
    seed: int = 0,
    size: tuple[int, int] = (160, 120),
    colours: str = "class",
) -> Path:
    """Write ``<root>/VOC2007/{JPEGImages,SegmentationClass}`` and the split files; return root.

    Image sizes vary around ``size`` (width, height) so the letterbox has work to do.
    """
    root = Path(root)
    images_dir = root / "VOC2007" / "JPEGImages"
    labels_dir = root / "VOC2007" / "SegmentationClass"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(num_images):
        width = int(size[0] * rng.uniform(0.8, 1.2))
        height = int(size[1] * rng.uniform(0.8, 1.2))
        image, label = make_sample(rng, width, height, colours)
        image.save(images_dir / f"{index:04d}.jpg", quality=92)
        label.save(labels_dir / f"{index:04d}.png")
    write_splits(root, trainval_percent=1.0, train_percent=0.8, seed=0)
    return root


def get_parser() -> argparse.ArgumentParser:
    parser = argument_parser(__doc__)
    parser.add_argument("--out", default="demo_data/VOCdevkit", help="data set root to write")
    parser.add_argument("--num-images", type=int, default=60, help="how many image/label pairs")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument(
        "--colours",
        choices=COLOURS,
        default="class",
        help="class: a hue per class (default); random: any colour, only shapes tell classes",
    )
    parser.add_argument(
        "--size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"), help="image size"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    root = make_demo_dataset(args.out, args.num_images, args.seed, tuple(args.size), args.colours)
    print(f"Wrote {args.num_images} images, classes {', '.join(CLASSES)}, to {root}")


if __name__ == "__main__":
    main()
