"""Evaluate a trained model on the val split: predictions, mIoU, charts and a metrics file.

    python get_miou.py --model-path logs/best_epoch_weights.pth --dataset-path VOCdevkit

--miou-mode 0 predicts and evaluates, 1 only predicts, 2 only evaluates existing predictions.
On CUDA, images are read by --num-workers processes and predicted --batch-size (8) at a time;
on the CPU one at a time, which is as fast there.
Writes ``<miou-out-path>/detection-results/<id>.png``, ``mIoU.png``, ``mPA.png``,
``Recall.png``, ``Precision.png``, ``confusion_matrix.csv``, ``metrics.json`` and
``legend.png`` (each class's colour and name, as predict.py draws them). With the medical
layout's two classes, also ``cell-probabilities/<id>.png``: each slice's cell probability in
255ths: the probability map that the ISBI 2012 challenge's errors are scored on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from unet import Unet
from utils.data.classes import class_colors
from utils.data.datasets import (
    DatasetLayout,
    read_class_label,
    read_split,
)
from utils.device import backend_settings, flush_denormals
from utils.drawing import draw_legend
from utils.errors import UserError, exit_on_user_error
from utils.inference.engines import settings_of
from utils.inference.pipeline import check_batching, check_threads
from utils.progress import progress
from utils.settings.cli import (
    add_batch_flags,
    add_model_flags,
    add_setting_flags,
    argument_parser,
    predictor_kwargs,
)
from utils.settings.config import MODEL_KEYS, SETTINGS
from utils.utils_metrics import (
    best_cell_pixel_error,
    cell_pixel_error,
    cell_scores,
    compute_mIoU,
    nanmean,
    never_found,
    per_Accuracy,
    show_results,
)


def get_parser() -> argparse.ArgumentParser:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--miou-mode",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help="0: predict + evaluate, 1: predict only, 2: evaluate only",
    )
    add_setting_flags(parser, ["dataset_path"])
    parser.set_defaults(dataset_path=SETTINGS["dataset_path"].default)
    parser.add_argument(
        "--split",
        default="val",
        help="ids to evaluate: a split name under ImageSets/Segmentation, or a path to a file "
        "of ids (default: %(default)s)",
    )
    parser.add_argument("--miou-out-path", default="miou_out", help="where results go")
    add_model_flags(parser, MODEL_KEYS)
    add_batch_flags(parser)
    return parser


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = get_parser().parse_args(argv)
    check_batching(args.batch_size, args.num_workers)
    check_threads(args.num_threads)
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    flush_denormals()  # before the intra-op threads start, so that they flush too
    args = get_args(argv)
    given = {key: getattr(args, key) for key in MODEL_KEYS}
    out = Path(args.miou_out_path)
    pred_dir, scores_dir = out / "detection-results", out / "cell-probabilities"
    with backend_settings(deterministic=False, tf32=args.tf32):
        if args.miou_mode in (0, 1):  # the predictor resolves the model's settings
            unet = Unet(**predictor_kwargs(args, Unet))
            settings = unet.settings
        else:  # mode 2 reads only labels and existing predictions
            path = args.model_path or SETTINGS["model_path"].default
            settings = settings_of(path, given, args.engine)
        names = read_split(args.dataset_path, args.split, settings.dataset_format)
        layout = DatasetLayout.of(args.dataset_path, settings.dataset_format)
        cells = settings.dataset_format == "medical" and settings.num_classes == 2
        if args.miou_mode in (0, 1):
            files = layout.image_files(names)
            names = predict_split(
                unet,
                files,
                names,
                pred_dir,
                args.batch_size,
                args.num_workers,
                scores_dir if cells else None,
            )
    gt_dir = layout.labels
    if settings.dataset_format == "medical":
        gt_dir = medical_labels(layout, names, settings.num_classes, out / "ground-truth")
    if args.miou_mode in (0, 2):
        if not (cells and all((scores_dir / f"{name}.png").is_file() for name in names)):
            scores_dir = None
        evaluate(names, gt_dir, pred_dir, out, settings.class_names, cells, scores_dir)


def medical_labels(layout: DatasetLayout, names: list[str], num_classes: int, folder: Path) -> Path:
    """The medical layout's grey labels as class indices (1 where <= 127.5), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in zip(names, layout.label_files(names), strict=True):
        Image.fromarray(read_class_label(path, num_classes, "medical")).save(folder / f"{name}.png")
    return folder


def predict_split(
    unet: Unet,
    images: list[Path],
    names: list[str],
    pred_dir: Path,
    batch_size: int | None = None,
    num_workers: int | None = None,
    scores_dir: Path | None = None,
) -> list[str]:
    """Save each image's class map as ``<id>.png`` in ``pred_dir``, and with ``scores_dir`` its
    8-bit probability of class 0 (the medical layout's cells) there; return the ids predicted.
    An image that cannot be read (damaged, too large) is skipped, named with its reason at the
    end; none predicted is an error."""
    for folder in (pred_dir, scores_dir):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    print("Get predict result.")
    predictions = unet.predict_files(
        images,
        batch_size,
        num_workers,
        skip_unreadable=True,
        scores_of=None if scores_dir is None else 0,
    )
    bar = progress(predictions, total=len(names), desc="Get predict result")
    done, skipped = [], []
    for name, result in zip(names, bar, strict=True):
        if result.error:
            skipped.append(result.error)
            continue
        Image.fromarray(result.labels).save(pred_dir / f"{name}.png")
        if scores_dir is not None:
            Image.fromarray(result.scores).save(scores_dir / f"{name}.png")
        done.append(name)
    print("Get predict result done.")
    if skipped:
        print(f"skipped {len(skipped)} of {len(names)} images:", *skipped, sep="\n  ")
    if not done:
        raise UserError(f"no image of the split could be read ({len(names)} tried); see above.")
    return done


def evaluate(
    names: list[str],
    gt_dir: Path,
    pred_dir: Path,
    out: Path,
    name_classes: list[str],
    cells: bool = False,
    scores_dir: Path | None = None,
) -> None:
    """The per-class table, the charts, ``confusion_matrix.csv``, ``metrics.json`` and the
    legend of the classes' colours, for the ``names`` of the split; with ``cells`` (the
    medical layout's membranes, class 0 the cells) the ISBI challenge's pixel, Rand and
    information errors too: of the cell probabilities in ``scores_dir`` at their best
    thresholds, as the challenge scores them, else of the class maps."""
    print("Get miou.")
    num_classes = len(name_classes)
    hist, ious, recall, precision = compute_mIoU(gt_dir, pred_dir, names, num_classes, name_classes)
    print(f"Get miou done: over {len(names)} images.")
    for line in never_found(hist, name_classes):
        print(line)
    show_results(out, hist, ious, recall, precision, name_classes)
    metrics = {
        "mIoU": nanmean(ious),
        "mPA": nanmean(recall),
        "accuracy": per_Accuracy(hist),
        "num_images": len(names),
        "per_class": {
            name: {"IoU": _json(i), "recall": _json(r), "precision": _json(p)}
            for name, i, r, p in zip(name_classes, ious, recall, precision, strict=True)
        },
        "confusion_matrix": hist.tolist(),
    }
    if cells:
        metrics.update(cell_errors(names, gt_dir, pred_dir, hist, scores_dir))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"Save metrics out to {out / 'metrics.json'}")
    legend = draw_legend(name_classes, class_colors(num_classes), out / "legend.png")
    print(f"Save the classes' colours and names to {legend}")


def cell_errors(
    names: list[str], gt_dir: Path, pred_dir: Path, hist: np.ndarray, scores_dir: Path | None
) -> dict[str, float]:
    """Print and return the ISBI 2012 challenge's errors of the cells (class 0): of the
    probabilities in ``scores_dir`` at their best thresholds where they were kept (the pixel
    error of the class maps beside), else of the class maps."""
    errors = {"class_map_pixel_error": cell_pixel_error(hist)}
    if scores_dir is None:
        errors["pixel_error"] = errors["class_map_pixel_error"]
        how = "of the class maps"
    else:
        errors["pixel_error"], errors["pixel_error_threshold"] = best_cell_pixel_error(
            gt_dir, scores_dir, names
        )
        how = (
            f"at threshold {errors['pixel_error_threshold']:g} of the cell probability; "
            f"{errors['class_map_pixel_error']:.4f} of the class maps"
        )
    print(f"===> Pixel error: {errors['pixel_error']:.4f} (ISBI 2012: 1 - cells' F-score, {how})")
    scores = cell_scores(gt_dir, pred_dir, names, scores_dir=scores_dir)
    if scores:
        best = "" if scores_dir is None else ", best thresholds"
        print(
            f"===> Rand error: {scores['rand_error']:.4f}; information error: "
            f"{scores['information_error']:.4f} (ISBI 2012: foreground-restricted, on "
            f"connected cells{best})"
        )
        errors.update(scores)
    return errors


def _json(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


if __name__ == "__main__":
    main()
