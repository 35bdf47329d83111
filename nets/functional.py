"""The functional core of the losses and the metrics: resizing logits to their target, the Dice
score, and per-class sums on the device. ``nets.losses`` (the losses) and
``utils.utils_metrics`` (the f-score) both build on it; neither imports the other."""

from __future__ import annotations

import torch

from nets.interpolate import resize_bilinear


def resize_to(inputs: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinearly resize logits to the target size when either side differs.

    The reference resized only when both sides differed, and crashed otherwise.
    """
    if tuple(inputs.shape[-2:]) != (height, width):
        inputs = resize_bilinear(inputs, (height, width), align_corners=True)
    return inputs


#: Up to this many bins, CUDA sums per class by comparing and reducing once per class: real
#: labels are mostly background, and a scatter's atomic adds into that one address serialise on
#: a GPU. The CPU scatters in one sequential pass, many times faster there than a pass per
#: class (``python -m benchmarks.counting`` times both, on uniform and on skewed labels).
COMPARE_MAX_BINS = 32


def class_sums(
    labels: torch.Tensor, bins: int, values: torch.Tensor | None = None, compare: bool | None = None
) -> torch.Tensor:
    """Per-bin sums of ``values`` (None: int64 counts) over flat ``labels`` in ``[0, bins)``.

    ``compare`` (None: on CUDA with at most :data:`COMPARE_MAX_BINS` bins) sums each bin's mask;
    otherwise a scatter (not ``bincount``, which reads its size back to the host). Counts are the
    same integers either way; float sums differ only by the order of their rounding.
    """
    if compare is None:
        compare = labels.is_cuda and bins <= COMPARE_MAX_BINS
    if compare:
        masks = (labels == c for c in range(bins))
        if values is None:
            return torch.stack([mask.sum() for mask in masks])
        return torch.stack([torch.where(mask, values, 0).sum() for mask in masks])
    if values is None:
        counts = torch.zeros(bins, dtype=torch.int64, device=labels.device)
        return counts.scatter_add_(0, labels, torch.ones_like(labels))
    return torch.zeros(bins, dtype=values.dtype, device=values.device).index_add(0, labels, values)


def dice_score(
    probs: torch.Tensor, target: torch.Tensor, beta: float = 1, smooth: float = 1e-5
) -> torch.Tensor:
    """Mean over classes of the F-beta score between (N, C, H, W) ``probs`` and the target.

    ``target`` is the reference's (N, H, W, C + 1) one-hot, whose last (ignore) channel is
    dropped, or (N, H, W) class indices with ``C`` = ignore, which gives the same score without
    building the one-hot. Predicted mass on ignored pixels counts as false positive, as in the
    reference.
    """
    num_classes = probs.shape[1]
    if target.dim() == 3:
        labels = target.clamp(max=num_classes - 1).unsqueeze(1)
        picked = probs.gather(1, labels).squeeze(1) * (target < num_classes)
        tp = class_sums(labels.reshape(-1), num_classes, picked.reshape(-1))
        counts = class_sums(target.reshape(-1), num_classes + 1)
        fn = counts[:num_classes].to(probs.dtype) - tp
    else:
        one_hot = target[..., :-1].permute(0, 3, 1, 2)
        tp = torch.sum(one_hot * probs, dim=(0, 2, 3))
        fn = torch.sum(one_hot, dim=(0, 2, 3)) - tp
    fp = torch.sum(probs, dim=(0, 2, 3)) - tp
    beta2 = beta**2
    score = ((1 + beta2) * tp + smooth) / ((1 + beta2) * tp + beta2 * fn + fp + smooth)
    return torch.mean(score)


def target_size(target: torch.Tensor) -> tuple[int, int]:
    """(H, W) of a class-index (N, H, W) or one-hot (N, H, W, C + 1) target."""
    return tuple(target.shape[1:3])
