"""mIoU and friends on small hand-made label/prediction folders."""

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from utils.errors import UserError
from utils.utils_metrics import (
    CHALLENGE_THRESHOLDS,
    ConfusionMatrix,
    best_cell_pixel_error,
    cell_pixel_error,
    cell_scores,
    compute_mIoU,
    fast_hist,
    show_results,
)

# Two images, 3 classes; 255 is the border to ignore; class 2 appears in neither.
LABELS = {"a": [[0, 0, 1], [1, 255, 0]], "b": [[1, 1], [0, 255]]}
PREDS = {"a": [[0, 1, 1], [1, 0, 0]], "b": [[1, 0], [0, 1]]}
EXPECTED_HIST = [[3, 1, 0], [1, 3, 0], [0, 0, 0]]


def write_pngs(folder, arrays, mode="L"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, values in arrays.items():
        Image.fromarray(np.array(values, dtype=np.uint8)).convert(mode).save(folder / f"{name}.png")


@pytest.fixture
def folders(tmp_path):
    write_pngs(tmp_path / "gt", LABELS)
    write_pngs(tmp_path / "pred", PREDS)
    return tmp_path / "gt", tmp_path / "pred"


def test_miou_on_hand_made_folders_ignores_255_and_leaves_absent_class_out(folders):
    hist, ious, recall, precision = compute_mIoU(*folders, ["a", "b"], 3, ["bg", "x", "y"])
    assert hist.tolist() == EXPECTED_HIST
    assert ious[:2].tolist() == [0.6, 0.6] and math.isnan(ious[2])
    assert recall[:2].tolist() == [0.75, 0.75] and math.isnan(recall[2])
    assert precision[:2].tolist() == [0.75, 0.75] and math.isnan(precision[2])
    assert np.nanmean(ious) == pytest.approx(0.6)  # the reference scored class 2 as 0 -> 0.4


def test_miou_reads_palette_labels_as_class_indices(tmp_path, folders):
    gt, pred = folders
    palette_gt = tmp_path / "palette"
    palette_gt.mkdir()
    for name in LABELS:
        image = Image.fromarray(np.array(LABELS[name], dtype=np.uint8), mode="P")
        image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255] * (3 * 253))
        image.save(palette_gt / f"{name}.png")
    hist, *_ = compute_mIoU(palette_gt, pred, ["a", "b"], 3)
    assert hist.tolist() == EXPECTED_HIST


def test_rgb_label_is_an_error_naming_the_file(tmp_path, folders):
    gt, pred = folders
    Image.new("RGB", (3, 2), (128, 0, 0)).save(gt / "a.png")
    with pytest.raises(UserError, match=r"gt/a\.png' is a colour image \(mode RGB\)"):
        compute_mIoU(gt, pred, ["a", "b"], 3)


def test_size_mismatch_is_an_error_naming_both_files(folders):
    gt, pred = folders
    Image.new("L", (5, 5)).save(pred / "b.png")
    with pytest.raises(UserError, match=r"pred/b\.png is 5x5 but label .*gt/b\.png is 2x2"):
        compute_mIoU(gt, pred, ["a", "b"], 3)


def test_missing_prediction_is_an_error_naming_the_file(folders):
    gt, pred = folders
    (pred / "b.png").unlink()
    with pytest.raises(UserError, match=r"prediction file .*pred/b\.png' does not exist"):
        compute_mIoU(gt, pred, ["a", "b"], 3)


def test_prediction_beyond_num_classes_is_an_error(folders):
    gt, pred = folders
    write_pngs(pred, {"a": [[0, 7, 1], [1, 0, 0]]})
    with pytest.raises(UserError, match="holds class 7 but num_classes is 3"):
        compute_mIoU(gt, pred, ["a"], 3)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_confusion_counts_are_the_same_from_numpy_and_from_tensors(kind):
    """One confusion matrix for training (tensors, counted on the device) and get_miou (NumPy):
    the ignore value 255 and labels past the classes are left out."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 6, (40, 30)).astype(np.uint8)
    label[0, :5] = 255
    pred = rng.integers(0, 5, (40, 30)).astype(np.uint8)
    expected = np.zeros((5, 5), np.int64)
    for truth, guess in zip(label.ravel(), pred.ravel(), strict=True):
        if truth < 5:
            expected[truth, guess] += 1
    convert = torch.from_numpy if kind == "torch" else np.asarray
    assert np.array_equal(np.asarray(fast_hist(convert(label), convert(pred), 5)), expected)
    matrix = ConfusionMatrix(5)
    matrix.update(convert(label), convert(pred))
    matrix.update(convert(label), convert(pred))
    assert np.array_equal(matrix.hist, 2 * expected)


def test_confusion_matrix_accumulates_and_reduces():
    matrix = ConfusionMatrix(3)
    for name in LABELS:
        matrix.update(torch.tensor(LABELS[name]), torch.tensor(PREDS[name]))
    assert matrix.hist.tolist() == EXPECTED_HIST
    assert matrix.miou == pytest.approx(0.6)
    assert matrix.accuracy == pytest.approx(0.75)


def test_show_results_writes_charts_and_csv(tmp_path, folders):
    hist, ious, recall, precision = compute_mIoU(*folders, ["a", "b"], 3)
    names = ["background", "cell", "absent"]
    show_results(tmp_path / "out", hist, ious, recall, precision, names)
    for file_name in ("mIoU.png", "mPA.png", "Recall.png", "Precision.png"):
        with Image.open(tmp_path / "out" / file_name) as image:
            assert image.size[0] > 100
    with open(tmp_path / "out" / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["label \\ prediction", *names]  # rows are labels, columns predictions
    assert rows[1:] == [[n, *map(str, r)] for n, r in zip(names, EXPECTED_HIST, strict=True)]


def test_cell_scores_are_zero_for_a_perfect_membrane_map_and_grow_when_cells_merge(tmp_path):
    """Cells (class 0) inside a grid of membranes (class 1): the same map scores 0; a gap in
    one membrane merges two cells, which the Rand and information errors count."""
    pytest.importorskip("skimage")
    label = np.zeros((40, 40), np.uint8)
    label[::10, :] = label[:, ::10] = 1  # 16 cells
    merged = label.copy()
    merged[10, 2:9] = 0  # the wall between two cells is gone
    for folder, array in (("gt", label), ("same", label), ("merged", merged)):
        (tmp_path / folder).mkdir()
        Image.fromarray(array).save(tmp_path / folder / "a.png")
    same = cell_scores(tmp_path / "gt", tmp_path / "same", ["a"])
    assert same == {"rand_error": 0.0, "information_error": 0.0}
    worse = cell_scores(tmp_path / "gt", tmp_path / "merged", ["a"])
    assert worse["rand_error"] > 0.01 and worse["information_error"] > 0.01


def test_a_probability_map_is_scored_at_its_best_threshold_with_counts_pooled_over_images(
    tmp_path,
):
    """Fiji's maximal F-score over the thresholds 0, 0.1, ..., 1, worked by hand. Ten cell
    pixels (class 0) and ten membrane pixels over two images: above 0.3 (76.5 / 255) nine cells
    are found and no membrane, 1 / 19; the class map's 0.5 misses four cells."""
    label = np.array([[0] * 5 + [1] * 5, [0] * 5 + [1] * 5], np.uint8)
    scores = np.array([[255, 255, 255, 100, 10, 0, 0, 0, 0, 60],
                       [255, 255, 255, 100, 100, 0, 0, 0, 60, 0]], np.uint8)  # fmt: skip
    for folder, array in (("gt", label), ("scores", scores)):
        (tmp_path / folder).mkdir()
        for row, name in enumerate(("a", "b")):
            Image.fromarray(array[row : row + 1]).save(tmp_path / folder / f"{name}.png")
    error, threshold = best_cell_pixel_error(tmp_path / "gt", tmp_path / "scores", ["a", "b"])
    assert (error, threshold) == (pytest.approx(1 / 19), pytest.approx(0.3))
    at_half = cell_pixel_error(np.array([[6, 4], [0, 10]]))  # above 0.5: the six 255s
    assert at_half == pytest.approx(4 / 16) and at_half > error
    assert list(CHALLENGE_THRESHOLDS) == [i / 10 for i in range(11)]
    Image.fromarray(scores).save(tmp_path / "scores" / "b.png")  # both rows: not b's label's size
    with pytest.raises(UserError, match=r"scores/b.png is 10x2 but its label is 10x1; predict"):
        best_cell_pixel_error(tmp_path / "gt", tmp_path / "scores", ["a", "b"])


def test_the_rand_error_of_a_probability_map_is_its_best_thresholds(tmp_path):
    """A membrane grid drawn as probabilities: a wall the network doubts (cell probability 0.8)
    merges two cells at the class map's 0.5, not above 0.8, which the best threshold finds."""
    pytest.importorskip("skimage")
    label = np.zeros((40, 40), np.uint8)
    label[::10, :] = label[:, ::10] = 1  # 16 cells
    scores = np.where(label == 0, 255, 0).astype(np.uint8)
    scores[10, 1:10] = 204  # 0.8
    merged = (scores <= 127).astype(np.uint8)  # the class map: the wall is gone
    for folder, array in (("gt", label), ("scores", scores), ("pred", merged)):
        (tmp_path / folder).mkdir()
        Image.fromarray(array).save(tmp_path / folder / "a.png")
    at_half = cell_scores(tmp_path / "gt", tmp_path / "pred", ["a"])
    best = cell_scores(tmp_path / "gt", tmp_path / "pred", ["a"], scores_dir=tmp_path / "scores")
    assert at_half["rand_error"] > 0.01 and best == {"rand_error": 0.0, "information_error": 0.0}


def test_the_cell_pixel_error_is_one_minus_the_f_score_of_the_cells_not_the_accuracy():
    """The ISBI 2012 challenge's pixel error, worked by hand: 80 cell pixels right, 5 missed,
    3 membrane pixels taken for cells, 12 membrane pixels right (100 in all)."""
    hist = np.array([[80, 5], [3, 12]])
    precision, recall = 80 / 83, 80 / 85
    assert cell_pixel_error(hist) == pytest.approx(
        1 - 2 * precision * recall / (precision + recall)
    )
    assert cell_pixel_error(hist) == pytest.approx(8 / 168)  # where 1 - accuracy is 8 / 100
    assert cell_pixel_error(np.array([[7, 0], [0, 3]])) == 0.0
    assert cell_pixel_error(np.array([[0, 0], [0, 9]])) == 0.0  # no cells anywhere: none wrong
