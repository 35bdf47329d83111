"""One inference pipeline for predict.py, get_miou.py and the in-training mIoU.

The original's steps, in order: letterbox (Pillow bicubic onto gray) -> ``/ 255`` -> forward ->
softmax -> crop the letterbox padding -> bilinear resize to the original size -> argmax. The
letterbox runs on the host (in DataLoader workers when predicting many images); everything
after it runs on the model's device, in torch, and only the uint8 class map comes back.
``F.interpolate(mode="bilinear", align_corners=False)`` uses the pixel-centre convention of
``cv2.resize(..., INTER_LINEAR)``, which the original calls, so the labels match the original's
on all but a few pixels where float rounding tips an argmax.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from utils.device import Runtime
from utils.errors import UserError
from utils.images import cvtColor, stack_images
from utils.inference.inputs import (
    Placement,
    PredictionSet,
    Sample,
    collate_predictions,
    letterbox_input,
    read_file,
)
from utils.seeding import one_opencv_thread_per_worker, seed_worker

#: A function from a float model input on the runtime's device to (N, classes, H, W) logits.
Forward = Callable[[torch.Tensor], torch.Tensor]


def check_batching(
    batch_size: int | None, num_workers: int | None, flag: str = "--batch-size"
) -> None:
    """``--batch-size`` (or ``flag``) and ``--num-workers`` must make sense before any work;
    None stands for "the default" (:func:`default_batching`)."""
    if batch_size is not None and batch_size < 1:
        raise UserError(f"{flag} must be at least 1, not {batch_size}.")
    if num_workers is not None and num_workers < 0:
        raise UserError(f"--num-workers cannot be negative ({num_workers}); 0 reads in-process.")


def check_threads(num_threads: int | None) -> None:
    """``--num-threads`` is None (torch's) or at least 1."""
    if num_threads is not None and num_threads < 1:
        raise UserError(f"--num-threads must be at least 1, not {num_threads}.")


def default_batching(
    device: torch.device, batch_size: int | None = None, num_workers: int | None = None
) -> tuple[int, int]:
    """The batch size and reader processes to use where the user gave none.

    On CUDA: 8 images per forward pass and up to 4 workers, so the GPU never waits for the
    JPEG decoder. On the CPU: one image at a time, read in-process: the network already uses
    every core, and on a 2-core AMD Zen 4 batches of 8 took 10% longer per image and 2 workers
    25% longer (ISBI images at 160x160).
    """
    if device.type == "cuda":
        defaults = (8, min(4, os.cpu_count() or 1))
    else:
        defaults = (1, 0)
    return (
        defaults[0] if batch_size is None else batch_size,
        defaults[1] if num_workers is None else num_workers,
    )


def resize_to_original(probs: torch.Tensor, placement: Placement) -> torch.Tensor:
    """(C, H, W) probabilities at input size -> (C, height, width) at the image's own size.

    The padding is cropped first. The result is channels-last in memory, where the argmax over
    classes reads contiguous values (four times faster on a CPU than over NCHW).
    """
    p = placement
    crop = probs[:, p.top : p.top + p.inner_height, p.left : p.left + p.inner_width]
    crop = crop.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    resized = F.interpolate(crop, size=(p.height, p.width), mode="bilinear", align_corners=False)
    return resized[0]


def class_map(probs: torch.Tensor) -> torch.Tensor:
    """The (H, W) uint8 argmax over the classes of (C, H, W) probabilities, the first class
    where several tie, as ``argmax``. On the CPU as one running maximum over the class planes:
    torch's argmax over 21 classes took 50 ms at 512x512 and 380 ms at 1330x1330 there, 7
    times longer."""
    if probs.is_cuda:
        return probs.argmax(dim=0).to(torch.uint8)
    best = probs[0].clone()
    labels = torch.zeros(probs.shape[1:], dtype=torch.uint8)
    for index in range(1, probs.shape[0]):
        plane = probs[index]
        labels.masked_fill_(plane > best, index)
        torch.maximum(best, plane, out=best)
    return labels


def probability_bytes(plane: torch.Tensor) -> torch.Tensor:
    """A probability plane in 255ths, rounded, as uint8: an 8-bit probability map."""
    return plane.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def _source_pixels(out_size: int, in_size: int) -> tuple[torch.Tensor, ...]:
    """For each output pixel along one axis: its two source pixels and the second's weight,
    by pixel centres in float32, as ``F.interpolate(mode="bilinear")`` computes them."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    source = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    low = source.to(torch.int64)
    high = torch.where(low < in_size - 1, low + 1, low)
    return low, high, source - low


def labels_at_original(probs: torch.Tensor, placement: Placement) -> torch.Tensor:
    """``class_map(resize_to_original(probs, placement))`` without the full-size probabilities
    when an image is enlarged on the CPU (21 classes at 1330x1330 are 148 MB to write and read).

    A resized pixel's probabilities are a weighted mean of its four source pixels'. Where those
    four have the same top class, that class stays on top in any weighted mean of them, so the
    pixel takes it; only the pixels between sources that disagree are interpolated, as
    ``F.interpolate`` does (a few percent of them in a segmentation), and the labels are the
    same but where rounding tips a near-tie. On CUDA, and when shrinking, resizing everything
    is as fast.
    """
    p = placement
    crop = probs[:, p.top : p.top + p.inner_height, p.left : p.left + p.inner_width]
    height, width = crop.shape[1:]
    if probs.is_cuda or p.height * p.width <= height * width:
        return class_map(resize_to_original(probs, placement))
    pixels = crop.permute(1, 2, 0)  # (height, width, classes), whatever the memory layout
    source = class_map(crop)
    y0, y1, wy = _source_pixels(p.height, height)
    x0, x1, wx = _source_pixels(p.width, width)
    top, bottom = source.index_select(0, y0), source.index_select(0, y1)
    labels = top.index_select(1, x0)
    corners = (top.index_select(1, x1), bottom.index_select(1, x0), bottom.index_select(1, x1))
    mixed = (labels != corners[0]) | (labels != corners[1]) | (labels != corners[2])
    rows, cols = mixed.nonzero(as_tuple=True)
    top0, top1, bottom0, bottom1 = (
        pixels[y, x] for y in (y0[rows], y1[rows]) for x in (x0[cols], x1[cols])
    )
    wy, wx = wy[rows, None], wx[cols, None]
    upper = (1 - wx) * top0 + wx * top1
    lower = (1 - wx) * bottom0 + wx * bottom1
    labels[rows, cols] = ((1 - wy) * upper + wy * lower).argmax(1).to(torch.uint8)
    return labels


def window_starts(size: int, tile: int, stride: int) -> list[int]:
    """Window offsets covering ``size``; the last window is aligned to the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


#: Test-time augmentation: the views averaged with the input's own prediction.
TTA_MODES = ("flip", "d4")


def tta_mode(tta: bool | str | None) -> str | None:
    """None, "flip" or "d4" (True, the original-style switch, is "flip")."""
    if tta in (None, False, "", "none"):
        return None
    mode = "flip" if tta is True else tta
    if mode not in TTA_MODES:
        raise UserError(f"unknown --tta {tta!r}; use flip or d4 (--tta alone is flip).")
    return mode


def tta_views(mode: str | None, quarter_turns: bool = True) -> list[tuple[int, bool]]:
    """The (quarter turns, mirrored) views besides the input itself. ``d4`` on a network that
    takes only a non-square input size keeps the four views of that shape (mirrors and the
    half turn): a quarter turn would swap its height and width."""
    if mode == "flip":
        return [(0, True)]
    if mode == "d4":
        views = [(turns, mirror) for turns in range(4) for mirror in (False, True)][1:]
        return views if quarter_turns else [(0, True), (2, False), (2, True)]
    return []


class InferencePipeline:
    """Class maps and probabilities of images through one forward function, on its device.

    ``forward`` takes a float model input on ``runtime.device`` and returns logits: a torch
    model (run under the runtime's autocast) or an onnxruntime session. ``tile``/``stride``:
    predict ``tile`` x ``tile`` windows of the original image, ``stride`` apart (default
    ``tile // 2``), and average the overlapping probabilities. ``tta``: average with the
    prediction of the mirrored image (``"flip"``, or True), or of the 8 turns and mirrors of
    the dihedral group (``"d4"``), each turned back; ``fixed_size``: the network takes only
    its exported input size, so a non-square input is never turned a quarter.
    """

    def __init__(
        self,
        forward: Forward,
        input_shape: Sequence[int],
        runtime: Runtime,
        tile: int | None = None,
        stride: int | None = None,
        tta: bool | str | None = None,
        fixed_size: bool = False,
    ):
        self.forward = forward
        self.input_shape = (int(input_shape[0]), int(input_shape[1]))
        self.runtime = runtime
        self.tile = tile
        self.stride = stride or (max(tile // 2, 1) if tile else None)
        self.tta = tta_mode(tta)
        #: whether the network takes only its exported input size (a turned view of a
        #: non-square input then cannot run)
        self.fixed_size = fixed_size

    @torch.inference_mode()
    def input_probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """Softmax (N, C, H, W) float32 probabilities of uint8 (N, 3, H, W) network inputs."""
        x = self.runtime.model_input(inputs)
        with self.runtime.autocast():
            logits = self.forward(x)
        probs = torch.softmax(logits.float(), dim=1)
        turnable = x.shape[-1] == x.shape[-2] or not self.fixed_size
        views = tta_views(self.tta, quarter_turns=turnable)
        for turns, mirror in views:
            view = torch.rot90(x.flip(-1) if mirror else x, turns, (-2, -1))
            with self.runtime.autocast():
                seen = torch.softmax(self.forward(view).float(), dim=1)
            seen = torch.rot90(seen, -turns, (-2, -1))
            probs += seen.flip(-1) if mirror else seen
        return probs / (len(views) + 1)

    @torch.inference_mode()
    def probabilities(self, image: Image.Image) -> torch.Tensor:
        """(C, H, W) class probabilities of one image at its own size, on the device."""
        image = cvtColor(image)
        if self.tile:
            return self._tiled(np.asarray(image))
        data, placement = letterbox_input(image, self.input_shape)
        return resize_to_original(self.input_probabilities(data[None])[0], placement)

    @torch.inference_mode()
    def labels(self, image: Image.Image) -> torch.Tensor:
        """The (H, W) uint8 class map of one image, on the device."""
        image = cvtColor(image)
        if self.tile:
            return class_map(self._tiled(np.asarray(image)))
        data, placement = letterbox_input(image, self.input_shape)
        return labels_at_original(self.input_probabilities(data[None])[0], placement)

    def _tiled(self, image: np.ndarray, batch_size: int = 1) -> torch.Tensor:
        """Average the probabilities of overlapping windows, ``batch_size`` windows a pass."""
        height, width = image.shape[:2]
        boxes = [
            (top, left)
            for top in window_starts(height, self.tile, self.stride)
            for left in window_starts(width, self.tile, self.stride)
        ]
        total = counts = None
        for first in range(0, len(boxes), batch_size):
            chunk = boxes[first : first + batch_size]
            windows = [
                letterbox_input(
                    Image.fromarray(image[t : t + self.tile, x : x + self.tile]), self.input_shape
                )
                for t, x in chunk
            ]
            probs = self.input_probabilities(stack_images([data for data, _ in windows]))
            for p, (_, placement), (top, left) in zip(probs, windows, chunk, strict=True):
                if total is None:
                    total = probs.new_zeros((probs.shape[1], height, width))
                    counts = probs.new_zeros((1, height, width))
                rows = slice(top, top + placement.height)
                cols = slice(left, left + placement.width)
                total[:, rows, cols] += resize_to_original(p, placement)
                counts[:, rows, cols] += 1
        return total / counts

    def predict(
        self,
        items: Sequence,
        read: Callable[[Any], tuple[Image.Image, Any]] = read_file,
        batch_size: int = 1,
        num_workers: int = 0,
        keep_image: bool = False,
        to_host: bool = True,
        skip_unreadable: bool = False,
        scores_of: int | None = None,
    ) -> Iterator[tuple[Sample, np.ndarray | torch.Tensor | None]]:
        """Yield ``(sample, class map)`` for each item, in order, ``batch_size`` per forward pass.

        DataLoader workers (``num_workers``) read and letterbox the images; ``read(item)``
        returns the image and anything to pass along in ``sample.extra``. ``keep_image`` puts
        the decoded RGB image in ``sample.image``. With ``skip_unreadable`` an image that cannot
        be read comes back as ``(sample, None)`` with ``sample.error`` saying why; otherwise it
        stops the prediction. See :meth:`predict_batches` (and its ``scores_of``).
        """
        check_batching(batch_size, num_workers)
        dataset = PredictionSet(
            items, read, self.input_shape, keep_image, not self.tile, skip_unreadable
        )
        one_opencv_thread_per_worker(num_workers)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            shuffle=False,
            collate_fn=collate_predictions,
            pin_memory=self.runtime.device.type == "cuda",
            worker_init_fn=seed_worker,
        )
        return self.predict_batches(
            loader, to_host=to_host, tile_batch_size=batch_size, scores_of=scores_of
        )

    @torch.inference_mode()
    def predict_batches(
        self,
        batches: Iterable[tuple[torch.Tensor | None, list[Sample]]],
        to_host: bool = True,
        tile_batch_size: int = 1,
        scores_of: int | None = None,
    ) -> Iterator[tuple[Sample, np.ndarray | torch.Tensor]]:
        """Yield ``(sample, class map)`` for the batches of :func:`collate_predictions`.

        Each image is post-processed at its own size, so mixed sizes share a batch and at most
        one full-size probability map exists at a time. The class maps come back as uint8
        arrays, or stay on the device with ``to_host=False``. On CUDA a batch's maps are copied
        back without waiting, and the previous batch goes to the caller only once the next one
        is queued, so the GPU keeps working while the caller saves results. With ``scores_of``
        (a class index) each map is (2, H, W): the class map over that class's probability
        (:func:`probability_bytes`).
        """
        pending = None
        for inputs, all_samples in batches:
            samples = [s for s in all_samples if s.error is None]
            if self.tile:
                maps = [
                    self._with_scores(self._tiled(s.image, tile_batch_size), None, scores_of)
                    for s in samples
                ]
            elif samples:
                probs = self.input_probabilities(inputs)
                maps = [
                    self._with_scores(p, s.placement, scores_of)
                    for p, s in zip(probs, samples, strict=True)
                ]
                del probs
            else:
                maps = []
            current = (all_samples, _HostCopy(maps) if to_host and maps else maps)
            if pending is not None:
                yield from _pairs(*pending)
            pending = current
        if pending is not None:
            yield from _pairs(*pending)

    @staticmethod
    def _with_scores(
        probs: torch.Tensor, placement: Placement | None, scores_of: int | None
    ) -> torch.Tensor:
        """The class map of (C, H, W) probabilities at input size (``placement``) or already at
        the image's size (None), over class ``scores_of``'s probability bytes when asked."""
        labels = class_map(probs) if placement is None else labels_at_original(probs, placement)
        if scores_of is None:
            return labels
        plane = probs[scores_of : scores_of + 1]
        if placement is not None:
            plane = resize_to_original(plane, placement)
        return torch.stack([labels, probability_bytes(plane[0])])


class _HostCopy:
    """Class maps on their way to the host in one transfer. On CUDA the copy is queued into
    pinned memory without waiting, so the next batch can be queued behind it."""

    def __init__(self, maps: list[torch.Tensor]):
        self.shapes = [m.shape for m in maps]
        flat = torch.cat([m.reshape(-1) for m in maps])
        self.event = None
        if flat.is_cuda:
            self.host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            self.host.copy_(flat, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(flat.device))
        else:
            self.host = flat

    def arrays(self) -> list[np.ndarray]:
        if self.event is not None:
            self.event.synchronize()
        flat = self.host.numpy()
        ends = np.cumsum([int(np.prod(shape)) for shape in self.shapes])
        starts = np.concatenate([[0], ends[:-1]])
        return [
            flat[a:b].reshape(shape) for a, b, shape in zip(starts, ends, self.shapes, strict=True)
        ]


def _pairs(samples: list[Sample], maps):
    """Each sample with its class map, in order; None for a skipped (unreadable) image."""
    maps = iter(maps.arrays() if isinstance(maps, _HostCopy) else maps)
    return [(sample, None if sample.error else next(maps)) for sample in samples]
