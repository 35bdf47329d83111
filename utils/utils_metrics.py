"""Segmentation metrics: the training f-score and the confusion-matrix figures of get_miou.

Counting (``fast_hist`` / :class:`ConfusionMatrix`) is kept apart from reducing
(``per_class_iu`` and friends), so training-time evaluation and ``get_miou.py`` share one
confusion matrix and give the same numbers.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from nets.functional import dice_score, resize_to, target_size
from utils.errors import UserError, optional_import
from utils.images import read_label_png


def f_score(
    inputs: torch.Tensor,
    target: torch.Tensor,
    beta: float = 1,
    smooth: float = 1e-5,
    threhold: float = 0.5,
) -> torch.Tensor:
    """The Dice score of ``softmax > threhold`` (sic, the reference's name) vs the target.

    ``target`` is the reference's one-hot or the class indices, as in ``Dice_loss``.
    """
    inputs = resize_to(inputs, *target_size(target)).float()
    hard = torch.gt(torch.softmax(inputs, dim=1), threhold).float()
    return dice_score(hard, target, beta, smooth)


def fast_hist(a, b, n: int):
    """Confusion counts of labels ``a`` vs predictions ``b`` (rows = label, cols = prediction).

    Pixels whose label is outside ``[0, n)`` (the ignore value 255, or ``n``) are left out.
    Works on NumPy arrays and on torch tensors, counted on their device without waiting for
    it (no boolean indexing or ``bincount``, which read sizes back to the host).
    """
    if isinstance(a, torch.Tensor):
        a, b = a.reshape(-1).long(), b.reshape(-1).long()
        index = torch.where((a >= 0) & (a < n), n * a + b, n * n)  # ignored: one extra bin
        counts = torch.zeros(n * n + 1, dtype=torch.int64, device=a.device)
        counts.scatter_add_(0, index, torch.ones_like(index))
        return counts[:-1].reshape(n, n)
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    k = (a >= 0) & (a < n)
    counts = np.bincount(n * a[k].astype(np.int64) + b[k].astype(np.int64), minlength=n**2)
    return counts.reshape(n, n)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with NaN where the denominator is 0 (undefined, not 0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.shape(numerator), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def per_class_iu(hist: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for a class absent from both labels and predictions."""
    diag = np.diag(hist)
    return _ratio(diag, hist.sum(1) + hist.sum(0) - diag)


def per_class_PA_Recall(hist: np.ndarray) -> np.ndarray:
    """Pixel accuracy (= recall) per class; NaN for a class absent from the labels."""
    return _ratio(np.diag(hist), hist.sum(1))


def per_class_Precision(hist: np.ndarray) -> np.ndarray:
    """Precision per class; NaN for a class never predicted."""
    return _ratio(np.diag(hist), hist.sum(0))


def per_Accuracy(hist: np.ndarray) -> float:
    """Overall pixel accuracy."""
    return float(_ratio(np.trace(hist), np.sum(hist)))


#: A class with labelled pixels and an IoU under this (5%) counts as not found.
NEVER_FOUND_IOU = 0.05
#: What to try for a class never found.
NEVER_FOUND_ADVICE = (
    "train longer, weight it up with --cls-weights, or add --focal-loss; from scratch on a CPU, "
    "start from recipes/cpu.yaml"
)


def never_found(hist: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """One line for each class that has labelled pixels but an IoU near zero (under 5%): the
    model never predicts it, or predicts it elsewhere."""
    iou, labelled, predicted = per_class_iu(hist), hist.sum(1), hist.sum(0)
    lines = []
    for index, name in enumerate(class_names):
        if labelled[index] == 0 or iou[index] >= NEVER_FOUND_IOU:
            continue
        if predicted[index] == 0:
            what, how = "never found", "never predicted"
        else:
            what, how = "barely found", f"IoU {100 * iou[index]:.1f}"
        lines.append(
            f"warning: class '{name}' is {what} ({how} on its {int(labelled[index])} labelled "
            f"pixels); {NEVER_FOUND_ADVICE}."
        )
    return lines


#: The thresholds at which the ISBI 2012 challenge binarises a probability map: 0, 0.1, ..., 1.
CHALLENGE_THRESHOLDS = np.arange(11) / 10


def cell_pixel_error(hist: np.ndarray, cell_class: int = 0) -> float:
    """The ISBI 2012 challenge's pixel error of a class map: 1 - the F-score of the cell pixels
    (the white of its labels, the positives of its evaluation) over all the images' pixels.

    A class map is a binary proposal, scored at its one binarisation: this. It is (FP + FN) /
    (2 TP + FP + FN) with the cells as the positives, where 1 - pixel accuracy divides the same
    wrong pixels by all the pixels. A probability map: :func:`best_cell_pixel_error`."""
    true = float(hist[cell_class, cell_class])
    wrong = float(hist[cell_class].sum() + hist[:, cell_class].sum() - 2 * true)
    return wrong / (2 * true + wrong) if true + wrong else 0.0


def best_cell_pixel_error(
    gt_dir: Path, scores_dir: Path, names: Sequence[str], cell_class: int = 0
) -> tuple[float, float]:
    """The ISBI 2012 challenge's pixel error of 8-bit cell probability maps (``<id>.png`` in
    ``scores_dir``, 255 = surely a cell) and the threshold that gives it: the cells are the
    probabilities above each of :data:`CHALLENGE_THRESHOLDS`, the counts are pooled over the
    images, and the best F-score is kept (Fiji's ``PixelError.getPixelErrorMaximalFScore``,
    which the challenge's script calls)."""
    counts = np.zeros((2, 256), dtype=np.int64)  # probability bytes of the label's cells, others
    for name in names:
        cells = read_label_png(Path(gt_dir) / f"{name}.png", "label") == cell_class
        scores = _read_scores(Path(scores_dir) / f"{name}.png", cells.shape)
        counts[0] += np.bincount(scores[cells], minlength=256)
        counts[1] += np.bincount(scores[~cells], minlength=256)
    errors = []
    for threshold in CHALLENGE_THRESHOLDS:
        above = np.arange(256) > 255 * threshold
        hist = np.array([[c[above].sum(), c[~above].sum()] for c in counts])  # cell = class 0
        errors.append(cell_pixel_error(hist))
    best = int(np.argmin(errors))  # the first of equals, as Fiji keeps the first best F-score
    return errors[best], float(CHALLENGE_THRESHOLDS[best])


def _read_scores(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """An 8-bit probability map of a label of ``shape``, or a sentence saying why not."""
    scores = read_label_png(path, "cell probability")
    if scores.shape != shape:
        raise UserError(
            f"cell probability {path} is {scores.shape[1]}x{scores.shape[0]} but its label is "
            f"{shape[1]}x{shape[0]}; predict again (--miou-mode 0) to replace it."
        )
    return scores


def cell_scores(
    gt_dir: Path,
    pred_dir: Path,
    names: Sequence[str],
    cell_class: int = 0,
    scores_dir: Path | None = None,
) -> dict[str, float] | None:
    """The ISBI 2012 challenge's scores of a membrane segmentation, averaged over the images:
    the foreground-restricted Rand error and information error (variation of information) of
    the connected cells (4-connected pixels of ``cell_class``) of each prediction against those
    of its label, membrane pixels of the label left out, by scikit-image's
    ``adapted_rand_error`` and ``variation_of_information``. With ``scores_dir`` (8-bit cell
    probabilities, :func:`best_cell_pixel_error`) the cells are those above each of
    :data:`CHALLENGE_THRESHOLDS` and each error is its best threshold's, as the challenge
    scores a probability map. None without scikit-image."""
    metrics = optional_import("skimage.metrics", "scikit-image", "no Rand error is computed")
    measure = optional_import("skimage.measure", "scikit-image", "no Rand error is computed")
    if metrics is None or measure is None:
        return None
    rand, info = [], []  # per image, per proposal
    for name in names:
        label = read_label_png(Path(gt_dir) / f"{name}.png", "label") == cell_class
        if scores_dir is None:
            proposals = [read_label_png(Path(pred_dir) / f"{name}.png", "prediction") == cell_class]
        else:
            scores = _read_scores(Path(scores_dir) / f"{name}.png", label.shape)
            proposals = [scores > 255 * threshold for threshold in CHALLENGE_THRESHOLDS]
        true_cells = measure.label(label, connectivity=1)
        ignored = {"ignore_labels": (0,)}  # the label's membranes
        rand.append([])
        info.append([])
        for proposal in proposals:
            pred_cells = measure.label(proposal, connectivity=1)
            rand[-1].append(metrics.adapted_rand_error(true_cells, pred_cells, **ignored)[0])
            info[-1].append(
                sum(metrics.variation_of_information(true_cells, pred_cells, **ignored))
            )
    return {
        "rand_error": float(np.mean(rand, axis=0).min()),
        "information_error": float(np.mean(info, axis=0).min()),
    }


def nanmean(values: np.ndarray) -> float:
    """Mean over the defined entries; NaN (not a warning) when none is defined."""
    values = np.asarray(values, dtype=np.float64)
    return float(values[~np.isnan(values)].mean()) if (~np.isnan(values)).any() else float("nan")


class ConfusionMatrix:
    """Accumulates :func:`fast_hist` counts; the one confusion matrix of training and get_miou.

    The counts live on ``device`` (a tensor), so evaluating on a GPU never waits on it until
    :attr:`hist` is read.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.counts = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    def update(self, label, pred) -> None:
        """Add a label and its prediction: NumPy arrays, or tensors on the counts' device."""
        label, pred = torch.as_tensor(label), torch.as_tensor(pred)
        self.counts += fast_hist(
            label.to(self.counts.device), pred.to(self.counts.device), self.num_classes
        )

    @property
    def hist(self) -> np.ndarray:
        """The (num_classes, num_classes) counts on the host (rows = label, cols = prediction)."""
        return self.counts.cpu().numpy().copy()

    @property
    def iou(self) -> np.ndarray:
        return per_class_iu(self.hist)

    @property
    def recall(self) -> np.ndarray:
        return per_class_PA_Recall(self.hist)

    @property
    def precision(self) -> np.ndarray:
        return per_class_Precision(self.hist)

    @property
    def accuracy(self) -> float:
        return per_Accuracy(self.hist)

    @property
    def miou(self) -> float:
        return nanmean(self.iou)

    @property
    def mpa(self) -> float:
        return nanmean(self.recall)

    def summary(self) -> str:
        return (
            f"mIoU: {100 * self.miou:.2f}; mPA: {100 * self.mpa:.2f}; "
            f"Accuracy: {100 * self.accuracy:.2f}"
        )


def compute_mIoU(
    gt_dir,
    pred_dir,
    png_name_list: Sequence[str],
    num_classes: int,
    name_classes: Sequence[str] | None = None,
):
    """Confusion matrix and per-class IoU/recall/precision of ``pred_dir`` vs ``gt_dir`` PNGs.

    Returns ``(hist, IoUs, PA_Recall, Precision)``. A missing file, an RGB label, a size
    mismatch or a prediction outside ``[0, num_classes)`` is an error naming the file.
    """
    print("Num classes", num_classes)
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    matrix = ConfusionMatrix(num_classes)
    for ind, name in enumerate(png_name_list):
        gt_path, pred_path = gt_dir / f"{name}.png", pred_dir / f"{name}.png"
        label = read_label_png(gt_path, "label")
        pred = read_label_png(pred_path, "prediction")
        if label.shape != pred.shape:
            raise UserError(
                f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but label {gt_path} "
                f"is {label.shape[1]}x{label.shape[0]}; predict at the label's size."
            )
        if pred.size and int(pred.max()) >= num_classes:
            raise UserError(
                f"prediction {pred_path} holds class {int(pred.max())} but num_classes is "
                f"{num_classes}; evaluate with the num_classes the model was trained with."
            )
        matrix.update(label, pred)
        if name_classes is not None and ind > 0 and ind % 10 == 0:
            print(f"{ind:d} / {len(png_name_list):d}: {matrix.summary()}")
    if name_classes is not None:
        for name, iou, recall, precision in zip(
            name_classes, matrix.iou, matrix.recall, matrix.precision, strict=False
        ):
            print(
                f"===>{name}:\tIou-{_pct(iou)}; Recall (equal to the PA)-{_pct(recall)}; "
                f"Precision-{_pct(precision)}"
            )
    print(f"===> {matrix.summary()}")
    return matrix.hist.copy(), matrix.iou, matrix.recall, matrix.precision


def _pct(value: float) -> str:
    return "n/a" if np.isnan(value) else str(round(float(value) * 100, 2))


def draw_plot_func(
    values: np.ndarray,
    name_classes: Sequence[str],
    plot_title: str,
    x_label: str,
    output_path,
    tick_font_size: int = 12,
) -> bool:
    """Horizontal bar chart of one value per class, saved to ``output_path`` (no display);
    False when matplotlib is missing."""
    figure = optional_import("matplotlib.figure", "matplotlib", "no charts are drawn")
    if figure is None:
        return False
    Figure = figure.Figure

    values = np.asarray(values, dtype=np.float64)
    shown = np.nan_to_num(values, nan=0.0)
    fig = Figure(figsize=(8, max(3.0, 0.35 * len(values) + 1.5)))
    axes = fig.add_subplot()
    axes.barh(range(len(values)), shown, color="royalblue")
    axes.set_title(plot_title, fontsize=tick_font_size + 2)
    axes.set_xlabel(x_label, fontsize=tick_font_size)
    axes.set_yticks(range(len(values)), list(name_classes), fontsize=tick_font_size)
    axes.set_xlim(0, max(1.0, float(shown.max(initial=0))) * 1.15)
    for i, val in enumerate(values):
        text = " n/a" if np.isnan(val) else f" {val:.2f}"
        axes.text(shown[i], i, text, color="royalblue", va="center", fontweight="bold")
    fig.tight_layout()
    fig.savefig(output_path)
    return True


def show_results(
    miou_out_path,
    hist: np.ndarray,
    IoUs: np.ndarray,
    PA_Recall: np.ndarray,
    Precision: np.ndarray,
    name_classes: Sequence[str],
    tick_font_size: int = 12,
) -> None:
    """Write ``mIoU.png``, ``mPA.png``, ``Recall.png``, ``Precision.png`` and the CSV matrix
    (a row per label class, a column per predicted class)."""
    out = Path(miou_out_path)
    out.mkdir(parents=True, exist_ok=True)
    charts = [
        (IoUs, f"mIoU = {nanmean(IoUs) * 100:.2f}%", "Intersection over Union", "mIoU.png"),
        (PA_Recall, f"mPA = {nanmean(PA_Recall) * 100:.2f}%", "Pixel Accuracy", "mPA.png"),
        (PA_Recall, f"mRecall = {nanmean(PA_Recall) * 100:.2f}%", "Recall", "Recall.png"),
        (Precision, f"mPrecision = {nanmean(Precision) * 100:.2f}%", "Precision", "Precision.png"),
    ]
    for values, title, x_label, file_name in charts:
        if draw_plot_func(values, name_classes, title, x_label, out / file_name, tick_font_size):
            print(f"Save {file_name[:-4]} out to {out / file_name}")
    with open(out / "confusion_matrix.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label \\ prediction"] + [str(c) for c in name_classes])
        for name, row in zip(name_classes, hist, strict=True):
            writer.writerow([name] + [str(int(x)) for x in row])
    print(f"Save confusion_matrix out to {out / 'confusion_matrix.csv'}")
