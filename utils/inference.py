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


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    image: Image.Image,
    input_shape: Sequence[int],
    runtime: Runtime,
    channels_last: bool = False,
) -> np.ndarray:
    """Class probabilities (orig_h, orig_w, num_classes), float32, for one image."""
    image = cvtColor(image)
    orig_w, orig_h = image.size
    h, w = int(input_shape[0]), int(input_shape[1])
    data, _, (nw, nh) = letterbox(image, (h, w))
    batch = torch.from_numpy(data).permute(2, 0, 1).unsqueeze(0)
    with runtime.autocast():
        logits = model(to_model_input(batch, runtime.device, channels_last))[0]
    probs = torch.softmax(logits.float().permute(1, 2, 0), dim=-1).cpu().numpy()
    top, left = (h - nh) // 2, (w - nw) // 2
    probs = probs[top : top + nh, left : left + nw]
    return cv2.resize(probs, (orig_w, orig_h), interpolation=cv2.INTER_LINEAR).reshape(
        orig_h, orig_w, -1
    )


def predict_label(
    model: nn.Module,
    image: Image.Image,
    input_shape: Sequence[int],
    runtime: Runtime,
    channels_last: bool = False,
) -> np.ndarray:
    """The (orig_h, orig_w) uint8 class map of one image: what get_miou.py saves as PNG."""
    probs = predict_probs(model, image, input_shape, runtime, channels_last)
    return probs.argmax(axis=-1).astype(np.uint8)
