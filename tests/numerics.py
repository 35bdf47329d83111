"""What two numerical paths of one model may differ by, and where: the tolerances the tests state.

Bit-exact claims are tested with exact equality: the same path run twice, a resume against an
uninterrupted run, our code against the original's oracle on the same kernels. Two paths that
run different kernels (a batch of 8 against one image, channels-last against NCHW, onnxruntime
against torch, one CPU kind against another) sum in another order, so their fp32 probabilities
differ by float rounding, about 1e-6. An argmax can then flip only where the top two classes
nearly tie; everywhere else the labels must agree.
"""

from __future__ import annotations

import numpy as np

#: Where two fp32 paths may give different labels: the pixels whose top two probabilities are
#: closer than this. A hundred times the rounding two kernels show, so a flip outside it is a
#: real difference, not rounding.
TIE_MARGIN = 1e-4
#: The most near-tie pixels a comparison may excuse: more, and the test would test nothing.
MAX_TIE_SHARE = 0.01


def near_ties(probs: np.ndarray, margin: float = TIE_MARGIN) -> np.ndarray:
    """(H, W) bool: where the top two of (H, W, C) probabilities are less than ``margin`` apart."""
    top2 = np.partition(np.asarray(probs), -2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0] < margin


def assert_labels_agree(
    labels: np.ndarray, expected: np.ndarray, probs: np.ndarray, margin: float = TIE_MARGIN
) -> int:
    """Two (H, W) class maps (or (H, W, 3) drawings of them) agree at every pixel but the near
    ties of ``probs``, the (H, W, C) probabilities of either path; returns how many differ."""
    ties = near_ties(probs, margin)
    assert labels.shape[:2] == expected.shape[:2] == ties.shape
    assert ties.mean() <= MAX_TIE_SHARE, f"{ties.mean():.2%} of the pixels are near-ties"
    differ = labels != expected
    differ = differ.any(axis=-1) if differ.ndim == 3 else differ
    outside = int((differ & ~ties).sum())
    assert outside == 0, f"{outside} pixels differ where the top two classes are {margin} apart"
    return int(differ.sum())
