"""Training augmentations: each is one function, registered once with its name and its help
line (what ``--augment`` offers and ``--help`` says), drawing from the sample's own generator.

    image, label = AUGMENTATIONS["flip"].apply(image, label, (512, 512), rng, crop=False)

takes a PIL image and its (H, W) uint8 label and returns both as arrays at the input size:
letterboxed, or cropped at native resolution (``crop``, ``--train-crop``), then augmented.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils.errors import UserError
from utils.images import PAD_COLOR, letterbox


@dataclass(frozen=True)
class Augmentation:
    """One ``--augment`` choice: its name, its help line and the function that applies it."""

    name: str
    help: str
    apply: Callable[..., tuple[np.ndarray, np.ndarray]]


#: Every augmentation by name, in the order --help lists them.
AUGMENTATIONS: dict[str, Augmentation] = {}


def augmentation(name: str, help: str):
    """Register the decorated function as the augmentation ``name``."""

    def register(function):
        AUGMENTATIONS[name] = Augmentation(name, help, function)
        return function

    return register


def fit(image: np.ndarray, label: np.ndarray, size: Sequence[int], rng, crop: bool, path):
    """An image and its label at the input size: a random native crop, or the letterbox."""
    if crop:
        return random_crop(image, label, size, rng, path)
    image, label, _ = letterbox(Image.fromarray(image), size, Image.fromarray(label))
    return image, label


@augmentation("reference", "random scale, aspect, placement, flip and HSV jitter")
def reference(image: Image.Image, label: np.ndarray, size, rng, crop=False, path=None):
    """The original's augmentation (the whole image, whatever ``crop`` says)."""
    return random_transform(image, Image.fromarray(label), size, rng)


@augmentation("flip", "left-right and up-down flips")
def flip(image: Image.Image, label: np.ndarray, size, rng, crop=False, path=None):
    """Flips only, for data with no "up", such as cells."""
    image, label = fit(np.asarray(image), label, size, rng, crop, path)
    return random_flips(image, label, rng)


@augmentation("d4", "the 8 turns and mirrors: flips, quarter turns (half turns if not square)")
def d4(image: Image.Image, label: np.ndarray, size, rng, crop=False, path=None):
    """Flips and quarter turns, for data with neither an "up" nor a handedness, such as cells
    (a turn keeps the sides only when the input is square: 180 degrees at most otherwise)."""
    image, label = fit(np.asarray(image), label, size, rng, crop, path)
    image, label = random_turns(image, label, rng)
    return random_flips(image, label, rng)


@augmentation(
    "elastic", "the U-Net paper's elastic deformation with flips, turns and brightness/contrast"
)
def elastic(image: Image.Image, label: np.ndarray, size, rng, crop=False, path=None):
    """Deformed at native resolution, where sigma is in pixels, then fitted, turned, flipped."""
    image, label = elastic_deformation(np.asarray(image), label, rng)
    image = brightness_contrast(image, rng)
    image, label = fit(image, label, size, rng, crop, path)
    image, label = random_turns(image, label, rng)
    return random_flips(image, label, rng)


@augmentation(
    "shapes",
    "for classes told apart by shape, not colour: zoom and placement that keep the "
    "aspect, flips, turns, and the colours shuffled, inverted or greyed",
)
def shapes(image: Image.Image, label: np.ndarray, size, rng, crop=False, path=None):
    """Letterboxed (or cropped), zoomed, turned and flipped; then its colours changed, so that a
    class's colour in the training images never tells the class."""
    image, label = fit(np.asarray(image), label, size, rng, crop, path)
    image, label = random_zoom(image, label, rng)
    image, label = random_turns(image, label, rng)
    image, label = random_flips(image, label, rng)
    return shuffled_colours(image, rng), label


@augmentation("none", "letterbox only")
def none(image: Image.Image, label: np.ndarray, size, rng, crop=False, path=None):
    """No augmentation: what validation and prediction see."""
    return fit(np.asarray(image), label, size, rng, crop, path)


def rand(rng: np.random.Generator, a: float = 0, b: float = 1) -> float:
    return rng.random() * (b - a) + a


def random_transform(
    image: Image.Image,
    label: Image.Image,
    input_shape: Sequence[int],
    rng: np.random.Generator,
    jitter: float = 0.3,
    hue: float = 0.1,
    sat: float = 0.7,
    val: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference's training augmentation, drawing from ``rng`` in the reference's order.

    Random aspect (x U(.7,1.3) / U(.7,1.3)) and scale (U(.25, 2)), horizontal flip, random
    placement on a gray/0 canvas (which may crop), then HSV jitter through lookup tables.
    """
    iw, ih = image.size
    h, w = input_shape
    new_ar = iw / ih * rand(rng, 1 - jitter, 1 + jitter) / rand(rng, 1 - jitter, 1 + jitter)
    scale = rand(rng, 0.25, 2)
    if new_ar < 1:
        nh = int(scale * h)
        nw = int(nh * new_ar)
    else:
        nw = int(scale * w)
        nh = int(nw / new_ar)
    nw, nh = max(nw, 1), max(nh, 1)
    flip = rand(rng) < 0.5
    dx = int(rand(rng, 0, w - nw))
    dy = int(rand(rng, 0, h - nh))

    # The image is resized with torch's antialiased uint8 bicubic, which follows Pillow's
    # BICUBIC (within 2 levels) at a third of its cost; only the part of the (nw, nh) label
    # that lands on the canvas is resized (Pillow NEAREST with a box: the same pixels).
    x0, x1 = max(0, -dx), min(nw, w - dx)
    y0, y1 = max(0, -dy), min(nh, h - dy)
    if flip:
        x0, x1 = nw - x1, nw - x0
    source = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0)
    resized = F.interpolate(source, size=(nh, nw), mode="bicubic", antialias=True)
    part = resized[0, :, y0:y1, x0:x1].permute(1, 2, 0).numpy()
    sx, sy = iw / nw, ih / nh
    box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    label_part = np.asarray(label.resize((x1 - x0, y1 - y0), Image.NEAREST, box=box))
    if flip:
        part, label_part = part[:, ::-1], label_part[:, ::-1]
    image_data = np.full((h, w, 3), PAD_COLOR[0], dtype=np.uint8)  # gray: one value
    new_label = np.zeros((h, w), dtype=np.uint8)
    top, left = max(dy, 0), max(dx, 0)
    image_data[top : top + part.shape[0], left : left + part.shape[1]] = part
    new_label[top : top + part.shape[0], left : left + part.shape[1]] = label_part

    # HSV jitter through one 3-channel lookup table (the padding is jittered too, as before).
    r = rng.uniform(-1, 1, 3) * [hue, sat, val] + 1
    x = np.arange(0, 256, dtype=r.dtype)
    lut = np.stack(
        [(x * r[0]) % 180, np.clip(x * r[1], 0, 255), np.clip(x * r[2], 0, 255)], axis=-1
    ).astype(np.uint8)
    hsv = cv2.LUT(cv2.cvtColor(image_data, cv2.COLOR_RGB2HSV), lut.reshape(256, 1, 3))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), new_label


def random_flips(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flip an (H, W, 3) image and its (H, W) label left-right, then up-down, each half the time."""
    horizontal, vertical = rng.random(2) < 0.5
    if horizontal:
        image, label = image[:, ::-1], label[:, ::-1]
    if vertical:
        image, label = image[::-1], label[::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def elastic_deformation(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    grid: int = 3,
    sigma: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The U-Net paper's deformation: random displacements on a ``grid`` x ``grid`` grid (standard
    deviation ``sigma`` pixels), upsampled bicubically to a smooth field, applied with
    ``cv2.remap``: linear for the (H, W, 3) image, nearest for the (H, W) label, so the label
    keeps its values. Borders reflect, so nothing new appears at the edges."""
    height, width = label.shape
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid)).astype(np.float32)
    dx = cv2.resize(coarse[0], (width, height), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(coarse[1], (width, height), interpolation=cv2.INTER_CUBIC)
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x, map_y = xs + dx, ys + dy
    border = cv2.BORDER_REFLECT_101
    image = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=border)
    label = cv2.remap(label, map_x, map_y, cv2.INTER_NEAREST, borderMode=border)
    return image, label


def brightness_contrast(
    image: np.ndarray, rng: np.random.Generator, brightness: float = 0.1, contrast: float = 0.1
) -> np.ndarray:
    """Mild jitter: contrast x U(1 - c, 1 + c) around mid-grey, plus U(-b, b) x 255."""
    gain = 1 + rng.uniform(-contrast, contrast)
    shift = rng.uniform(-brightness, brightness) * 255
    lut = np.clip((np.arange(256) - 128) * gain + 128 + shift, 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut)


def random_zoom(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, low=0.7, high=1.3
) -> tuple[np.ndarray, np.ndarray]:
    """Scale by U(``low``, ``high``), both sides alike, and place at random on a canvas of the
    same size: cropped where larger, padded (gray, label 0) where smaller."""
    height, width = label.shape
    scale = rng.uniform(low, high)
    nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST)
    # larger: a negative offset crops it; smaller: a positive one keeps it inside the canvas
    dy = int(rng.integers(min(0, height - nh), max(0, height - nh) + 1))
    dx = int(rng.integers(min(0, width - nw), max(0, width - nw) + 1))
    out_image = np.full((height, width, 3), PAD_COLOR[0], dtype=np.uint8)
    out_label = np.zeros((height, width), dtype=label.dtype)
    ys, xs = slice(max(dy, 0), min(dy + nh, height)), slice(max(dx, 0), min(dx + nw, width))
    src = (slice(ys.start - dy, ys.stop - dy), slice(xs.start - dx, xs.stop - dx))
    out_image[ys, xs], out_label[ys, xs] = image[src], label[src]
    return out_image, out_label


def shuffled_colours(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The RGB channels in a random order, inverted half the time, grey a fifth of the time,
    with mild brightness and contrast jitter."""
    image = image[..., rng.permutation(3)]
    if rng.random() < 0.5:
        image = 255 - image
    if rng.random() < 0.2:
        image = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    return brightness_contrast(np.ascontiguousarray(image), rng)


def random_turns(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Turn by a random multiple of 90 degrees (180 at most when the sides differ)."""
    square = image.shape[0] == image.shape[1]
    turns = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
    return np.rot90(image, turns), np.rot90(label, turns)


def random_crop(
    image: np.ndarray, label: np.ndarray, size: Sequence[int], rng: np.random.Generator, path
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` = (h, w) window of an image and its label, at native resolution."""
    h, w = size
    height, width = label.shape
    if height < h or width < w:
        raise UserError(
            f"--train-crop {h} {w} is larger than image '{path}' ({height}x{width}); crop at most "
            f"{min(h, height)} {min(w, width)} or train on resized images without --train-crop."
        )
    top = int(rng.integers(height - h + 1))
    left = int(rng.integers(width - w + 1))
    window = (slice(top, top + h), slice(left, left + w))
    return np.ascontiguousarray(image[window]), np.ascontiguousarray(label[window])
