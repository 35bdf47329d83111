"""The U-Net paper's weight map, which the ``border_ce`` loss term weighs each pixel by:

    w(x) = 1 + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

on the pixels between objects (the membranes between cells), where d1 and d2 are the distances
to the nearest and the second-nearest object; 1 on the objects. Objects are the connected
regions (4-connected) of the object class: the cells, class 0, in the medical layout (light
in the label), class 1 in a two-class VOC layout. The paper adds a class-balancing term; here
``--cls-weights`` does that, as for the other losses.

A data set computes each label's map once, when it is built, and keeps it as uint8 (the weight
times :data:`SCALE`: 0.05 steps, 0 for padding that augmentation adds, which then does not
count). The augmentation moves the map with its label: it is replayed on the map with the
sample's own random draws.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError

#: The paper's border weight and width (pixels of the label).
W0, SIGMA = 10.0, 5.0
#: uint8 weight = round(weight * SCALE): 1 -> 20, the largest (1 + W0) -> 220.
SCALE = 20


def object_class(dataset_format: str) -> int:
    """Which class the objects are: the cells (0, light) of the medical layout, else class 1."""
    return 0 if dataset_format == "medical" else 1


def border_weight_map(objects: np.ndarray, w0: float = W0, sigma: float = SIGMA) -> np.ndarray:
    """The (H, W) float32 weight map of an (H, W) boolean mask of object pixels.

    Each object's distances are computed in its bounding box grown by ``4 sigma``: farther
    away, d1 + d2 > 4 sigma and the border term is below ``w0 * exp(-8)``, so it is left out.
    """
    from scipy import ndimage  # only where border weights are asked for: train.py starts fast

    regions, count = ndimage.label(objects)
    reach = math.ceil(4 * sigma)
    nearest = np.full(objects.shape, np.inf, dtype=np.float32)
    second = np.full(objects.shape, np.inf, dtype=np.float32)
    height, width = objects.shape
    for index, box in enumerate(ndimage.find_objects(regions), start=1):
        rows = slice(max(box[0].start - reach, 0), min(box[0].stop + reach, height))
        cols = slice(max(box[1].start - reach, 0), min(box[1].stop + reach, width))
        distance = ndimage.distance_transform_edt(regions[rows, cols] != index)
        distance = distance.astype(np.float32)
        d1, d2 = nearest[rows, cols], second[rows, cols]
        second[rows, cols] = np.minimum(d2, np.maximum(d1, distance))
        nearest[rows, cols] = np.minimum(d1, distance)
    gap = nearest + second  # inf where fewer than two objects are near
    weights = 1 + w0 * np.exp(-(gap**2) / (2 * sigma**2))
    weights[objects] = 1
    return weights.astype(np.float32)


def check_binary(raw: np.ndarray, path: Path) -> None:
    """Border weights need a label of two values; a grey label stops here, naming the file."""
    values = np.unique(raw)
    if values.size > 2:
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise UserError(
            f"label {path} holds {values.size} grey levels ({shown}), but the border_ce loss "
            "needs binary labels (objects light, the borders between them dark); threshold "
            "the labels to 0 and 255, or train without border_ce in --loss."
        )


def dequantized(maps: torch.Tensor) -> torch.Tensor:
    """uint8 maps as the float weights they stand for."""
    return maps.float() / SCALE


def quantized_weights(classes: np.ndarray, dataset_format: str) -> np.ndarray:
    """The uint8 weight map (weight x :data:`SCALE`) of an (H, W) class-index label."""
    weights = border_weight_map(classes == object_class(dataset_format))
    return np.clip(np.rint(weights * SCALE), 1, 255).astype(np.uint8)
