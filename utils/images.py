"""Images in and out: reading images and labels as the original does (8-bit RGB, palette labels),
the letterbox, the VOC palette, and batches of images."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils.errors import UserError

#: The letterbox fill: gray for the image, class 0 for the label (as in the reference).
PAD_COLOR = (128, 128, 128)


def cvtColor(image: Image.Image) -> Image.Image:
    """Return an RGB image; grayscale, palette and RGBA inputs are converted."""
    return image if image.mode == "RGB" else image.convert("RGB")


def read_image(
    path: str | Path, missing: str = "add it or remove its id from the split file"
) -> Image.Image:
    """Open and fully decode an image (so truncation shows here), as 8-bit RGB.

    ``missing`` is what to do when the file does not exist, in the caller's context. An image
    over Pillow's decompression-bomb limit is refused in a sentence; 16-bit and float images are
    scaled to 8 bits (:func:`to_8_bits`), never clipped.
    """
    try:
        image = Image.open(path)
        image.load()  # decodes everything and closes the file
    except FileNotFoundError:
        raise UserError(f"image file '{path}' does not exist; {missing}.") from None
    except Image.DecompressionBombError as error:
        raise UserError(
            f"image file '{path}' is too large to open ({str(error).split(',')[0]}); "
            "downscale it, or split it into tiles."
        ) from None
    except OSError as error:
        reason = str(error).rstrip(".")
        raise UserError(
            f"image file '{path}' cannot be read ({reason}); re-export or remove it."
        ) from error
    return cvtColor(to_8_bits(image))


#: Pillow's modes of more than 8 bits a channel, which its convert("RGB") clips at 255.
WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def to_8_bits(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float grey image as 8 bits, scaled as image viewers show it:
    16-bit (and integer values up to 65535) by 257, floats in [0, 1] by 255, other ranges
    stretched from their minimum to their maximum. Other modes are returned as they are."""
    if image.mode not in WIDE_MODES:
        return image
    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "F":
        scale = (0.0, 1.0) if low >= 0 and high <= 1 else (low, high)
    elif image.mode.startswith("I;16") or (low >= 0 and high <= 65535):
        scale = (0.0, 255.0 if high <= 255 and image.mode == "I" else 65535.0)
    else:
        scale = (low, high)
    span = (scale[1] - scale[0]) or 1.0
    scaled = np.clip(np.rint((values - scale[0]) * (255 / span)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def read_label_png(path: Path, role: str = "label", grayscale: bool = False) -> np.ndarray:
    """Read a single-channel class-index PNG, or say exactly why it cannot be used.

    ``grayscale`` converts colour masks to grey instead of refusing them (the medical layout
    thresholds grey levels rather than reading class indices).
    """
    if not path.is_file():
        raise UserError(
            f"{role} file '{path}' does not exist; create it or remove its id from the split file."
        )
    try:
        with Image.open(path) as image:
            mode = image.mode
            array = np.array(image.convert("L") if grayscale else image)
    except OSError as error:
        reason = str(error).rstrip(".")
        raise UserError(f"{role} file '{path}' cannot be read ({reason}); re-export it.") from error
    if array.ndim != 2:
        raise UserError(
            f"{role} file '{path}' is a colour image (mode {mode}); labels must be "
            "single-channel PNGs whose pixel values are class indices (palette 'P' or "
            "grayscale 'L')."
        )
    return array.astype(np.uint8) if array.dtype == bool else array


def letterbox(
    image: Image.Image, size: tuple[int, int], label: Image.Image | None = None
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    """Resize keeping the aspect ratio and pad to ``size`` = (height, width), centred.

    The image is resized BICUBIC onto a gray (128) canvas, the label NEAREST onto a 0 canvas,
    pixel for pixel as the reference's validation transform and predictor. Returns the
    (H, W, 3) uint8 image, the (H, W) uint8 label (or None) and the resized (nw, nh).
    """
    iw, ih = image.size
    h, w = size
    scale = min(w / iw, h / ih)
    # at least a pixel each way: a 20000x2 strip still fills one row of the input
    nw, nh = max(int(iw * scale), 1), max(int(ih * scale), 1)
    offset = ((w - nw) // 2, (h - nh) // 2)
    canvas = Image.new("RGB", (w, h), PAD_COLOR)
    canvas.paste(cvtColor(image).resize((nw, nh), Image.BICUBIC), offset)
    label_canvas = None
    if label is not None:
        label_canvas = Image.new("L", (w, h), 0)
        label_canvas.paste(label.resize((nw, nh), Image.NEAREST), offset)
        label_canvas = np.array(label_canvas)
    return np.array(canvas), label_canvas, (nw, nh)


def distinct_names(paths: Sequence[str | Path], suffix: str = ".png") -> list[str]:
    """One output file name per input, none twice even where case does not count (macOS,
    Windows): ``<stem><suffix>``, or for stems that collide (a.jpg, A.png) the whole name
    (``a.jpg.png``), numbered if even that repeats."""
    stems = Counter(Path(path).stem.lower() for path in paths)
    taken: set[str] = set()
    out = []
    for path in map(Path, paths):
        base = path.stem if stems[path.stem.lower()] == 1 else path.name
        name, number = base, 1
        while name.lower() in taken:  # a numbered name may be another input's own name
            number += 1
            name = f"{base}-{number}"
        taken.add(name.lower())
        out.append(f"{name}{suffix}")
    return out


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (3, H, W) views of (H, W, 3) arrays into a channels-last (N, 3, H, W) batch.

    The images keep their (H, W, 3) memory order, so stacking is a plain copy and a
    channels-last model needs no conversion.
    """
    return torch.stack([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)


def voc_palette(num_colors: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (labelme's and the reference's palette for <= 21 classes)."""
    palette = []
    for index in range(num_colors):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette
