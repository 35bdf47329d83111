"""What a prediction reads: images read and letterboxed in DataLoader workers, each with where
its picture sits in the network input (:class:`Placement`), batched for the pipeline of
:mod:`utils.inference.pipeline`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from utils.errors import UserError
from utils.images import cvtColor, letterbox, read_image, stack_images


@dataclass(frozen=True)
class Placement:
    """Where an image of ``width`` x ``height`` sits in its letterboxed network input."""

    width: int
    height: int
    top: int
    left: int
    inner_height: int
    inner_width: int


@dataclass
class Sample:
    """One image on its way through :meth:`InferencePipeline.predict`.

    ``extra`` is what the reader returned beside the image (a label, say); ``image`` is the RGB
    original as an (H, W, 3) uint8 array when the caller asked to keep it (or tiles need it);
    ``error`` says why an image that could not be read was skipped.
    """

    index: int
    placement: Placement | None
    extra: Any = None
    image: np.ndarray | None = None
    error: str | None = None


def letterbox_input(
    image: Image.Image, input_shape: Sequence[int]
) -> tuple[torch.Tensor, Placement]:
    """The (3, H, W) uint8 letterboxed network input of an RGB image, and where it sits."""
    h, w = int(input_shape[0]), int(input_shape[1])
    data, _, (nw, nh) = letterbox(image, (h, w))
    placement = Placement(image.width, image.height, (h - nh) // 2, (w - nw) // 2, nh, nw)
    return torch.from_numpy(data).permute(2, 0, 1), placement


def read_file(path) -> tuple[Image.Image, None]:
    """A :class:`PredictionSet` reader for image files (of a folder, or of a split)."""
    return read_image(path, missing="restore it (a broken link?), or remove it or its id"), None


class PredictionSet(Dataset):
    """Images read and letterboxed in DataLoader workers, for batched prediction.

    ``read(item)`` returns an image and anything to pass along with it (a label, say). With
    ``letterboxed=False`` (tiling) the sample carries the original image and no network input.
    With ``skip_unreadable``, an image that cannot be read becomes a sample with an ``error``.
    """

    def __init__(
        self,
        items: Sequence,
        read: Callable[[Any], tuple[Image.Image, Any]],
        input_shape: Sequence[int],
        keep_image: bool = False,
        letterboxed: bool = True,
        skip_unreadable: bool = False,
    ):
        self.items = items
        self.read = read
        self.input_shape = input_shape
        self.keep_image = keep_image or not letterboxed
        self.letterboxed = letterboxed
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, Sample]:
        try:
            image, extra = self.read(self.items[index])
        except UserError as error:
            if not self.skip_unreadable:
                raise
            return None, Sample(index, None, error=str(error))
        image = cvtColor(image)
        data = placement = None
        if self.letterboxed:
            data, placement = letterbox_input(image, self.input_shape)
        kept = np.asarray(image) if self.keep_image else None
        return data, Sample(index, placement, extra, kept)


def collate_predictions(batch) -> tuple[torch.Tensor | None, list[Sample]]:
    """A channels-last (N, 3, H, W) uint8 batch of the network inputs there are (none when
    tiling, none for skipped images), and every sample."""
    inputs = [data for data, _ in batch if data is not None]
    return (stack_images(inputs) if inputs else None), [sample for _, sample in batch]
