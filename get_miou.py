"""Evaluate a trained model on the val split: predictions, mIoU, charts and a metrics file.

    python get_miou.py --model-path logs/best_epoch_weights.pth --num-classes 21

--miou-mode 0 predicts and evaluates, 1 only predicts, 2 only evaluates existing predictions.
On CUDA, images are read by --num-workers processes and predicted --batch-size (8) at a time;
on the CPU one at a time, which is as fast there.
Writes ``<miou-out-path>/detection-results/<id>.png``, ``mIoU.png``, ``mPA.png``,
``Recall.png``, ``Precision.png``, ``confusion_matrix.csv`` and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from unet import add_batch_flags, add_model_flags, default_class_names, predictor_from_args
from utils.checkpoint import model_settings
from utils.cli import argument_parser
from utils.dataloader import DATASET_FORMATS, UnetDataset, read_split
from utils.errors import UserError, exit_on_user_error
from utils.inference import check_batching
from utils.utils_metrics import compute_mIoU, nanmean, per_Accuracy, show_results


def get_parser() -> argparse.ArgumentParser:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--miou-mode",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help="0: predict + evaluate, 1: predict only, 2: evaluate only",
    )
    parser.add_argument(
        "--name-classes",
        nargs="+",
        default=None,
        help="class names (default: from the settings file beside the weights, else the 21 VOC "
        "names for 21 classes, else class_0, class_1, ...)",
    )
    parser.add_argument("--dataset-path", default="VOCdevkit", help="data set root")
    parser.add_argument(
        "--dataset-format",
        choices=DATASET_FORMATS,
        default=None,
        help="voc or medical layout (default: the one the weights were trained on, from their "
        "settings file, else voc)",
    )
    parser.add_argument(
        "--split",
        default="val",
        help="ids to evaluate: a split name under ImageSets/Segmentation, or a path to a file "
        "of ids (default: %(default)s)",
    )
    parser.add_argument("--miou-out-path", default="miou_out", help="where results go")
    add_model_flags(parser)
    add_batch_flags(parser)
    return parser


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_parser()
    args = parser.parse_args(argv)
    check_batching(args.batch_size, args.num_workers)
    # what was not given comes from the settings file beside the weights, as in the predictor
    settings = model_settings(
        args.model_path, num_classes=args.num_classes, backbone=args.backbone,
        input_shape=args.input_shape, dataset_format=args.dataset_format,
        name_classes=args.name_classes,
    )  # fmt: skip
    vars(args).update(settings)
    if args.name_classes is None:
        args.name_classes = default_class_names(args.num_classes)
    if len(args.name_classes) != args.num_classes:
        raise UserError(
            f"--name-classes has {len(args.name_classes)} names but --num-classes is "
            f"{args.num_classes}; give one name per class."
        )
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    names = read_split(args.dataset_path, args.split, args.dataset_format)
    dataset = UnetDataset(names, args.input_shape, args.num_classes, False, args.dataset_path,
                          args.dataset_format, check_sample=0)  # fmt: skip
    out = Path(args.miou_out_path)
    pred_dir, gt_dir = out / "detection-results", dataset.layout.labels
    if args.dataset_format == "medical":
        gt_dir = out / "ground-truth"  # the labels as class indices (1 where <= 127.5)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for index, name in enumerate(names):
            Image.fromarray(dataset.read_pair(index)[1]).save(gt_dir / f"{name}.png")
    if args.miou_mode in (0, 1):
        pred_dir.mkdir(parents=True, exist_ok=True)
        unet = predictor_from_args(args)
        print("Get predict result.")
        predictions = unet.predict_files(dataset.image_paths, args.batch_size, args.num_workers)
        for name, result in zip(names, tqdm(predictions, total=len(names)), strict=True):
            Image.fromarray(result.labels).save(pred_dir / f"{name}.png")
        print("Get predict result done.")
    if args.miou_mode in (0, 2):
        print("Get miou.")
        hist, ious, recall, precision = compute_mIoU(
            gt_dir, pred_dir, names, args.num_classes, args.name_classes
        )
        print("Get miou done.")
        show_results(out, hist, ious, recall, precision, args.name_classes)
        metrics = {
            "mIoU": nanmean(ious), "mPA": nanmean(recall), "accuracy": per_Accuracy(hist),
            "pixel_error": 1 - per_Accuracy(hist),
            "num_images": len(names),
            "per_class": {
                name: {"IoU": _json(i), "recall": _json(r), "precision": _json(p)}
                for name, i, r, p in zip(args.name_classes, ious, recall, precision, strict=True)
            },
            "confusion_matrix": hist.tolist(),
        }  # fmt: skip
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(f"Save metrics out to {out / 'metrics.json'}")


def _json(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


if __name__ == "__main__":
    main()
