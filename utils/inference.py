"""The reference's prediction pipeline, shared by training-time evaluation and the predictor.

letterbox -> /255 -> forward -> softmax -> crop the padding -> ``cv2.resize`` of the
probabilities to the original size (INTER_LINEAR) -> argmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from utils.device import Runtime
from utils.utils import cvtColor, letterbox


def to_model_input(
    images: torch.Tensor, device: torch.device, channels_last: bool = False
) -> torch.Tensor:
    """uint8 (N, 3, H, W) images -> float ``/ 255`` on ``device``, in the wanted memory format."""
    images = images.to(device, non_blocking=True).float().div_(255)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return images.contiguous(memory_format=memory_format)


def _window_starts(size: int, tile: int, stride: int) -> list[int]:
    """Window offsets covering ``size``; the last window is aligned to the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


@torch.no_grad()
def _letterboxed_probs(model, image, input_shape, runtime, channels_last, tta) -> np.ndarray:
    orig_w, orig_h = image.size
    h, w = int(input_shape[0]), int(input_shape[1])
    data, _, (nw, nh) = letterbox(image, (h, w))
    x = to_model_input(
        torch.from_numpy(data).permute(2, 0, 1).unsqueeze(0), runtime.device, channels_last
    )
    with runtime.autocast():
        logits = model(x)[0]
    probs = torch.softmax(logits.float(), dim=0)
    if tta:
        with runtime.autocast():
            flipped = model(x.flip(-1))[0]
        probs = (probs + torch.softmax(flipped.float(), dim=0).flip(-1)) / 2
    probs = probs.permute(1, 2, 0).cpu().numpy()
    top, left = (h - nh) // 2, (w - nw) // 2
    probs = probs[top : top + nh, left : left + nw]
    resized = cv2.resize(probs, (orig_w, orig_h), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(orig_h, orig_w, -1)


def predict_probs(
    model: nn.Module,
    image: Image.Image,
    input_shape: Sequence[int],
    runtime: Runtime,
    channels_last: bool = False,
    tile: int | None = None,
    stride: int | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Class probabilities (orig_h, orig_w, num_classes), float32, for one image.

    ``tile``: predict ``tile`` x ``tile`` windows of the original image ``stride`` apart
    (default ``tile // 2``) and average the overlapping probabilities, for images much larger
    than the input size. ``tta``: average with the prediction of the mirrored image.
    """
    image = cvtColor(image)
    if not tile:
        return _letterboxed_probs(model, image, input_shape, runtime, channels_last, tta)
    stride = stride or max(tile // 2, 1)
    width, height = image.size
    total = counts = None
    for top in _window_starts(height, tile, stride):
        for left in _window_starts(width, tile, stride):
            window = image.crop((left, top, min(left + tile, width), min(top + tile, height)))
            probs = _letterboxed_probs(model, window, input_shape, runtime, channels_last, tta)
            if total is None:
                total = np.zeros((height, width, probs.shape[-1]), np.float32)
                counts = np.zeros((height, width, 1), np.float32)
            total[top : top + probs.shape[0], left : left + probs.shape[1]] += probs
            counts[top : top + probs.shape[0], left : left + probs.shape[1]] += 1
    return total / counts


def predict_label(
    model: nn.Module,
    image: Image.Image,
    input_shape: Sequence[int],
    runtime: Runtime,
    channels_last: bool = False,
    **options,
) -> np.ndarray:
    """The (orig_h, orig_w) uint8 class map of one image: what get_miou.py saves as PNG."""
    probs = predict_probs(model, image, input_shape, runtime, channels_last, **options)
    return probs.argmax(axis=-1).astype(np.uint8)
