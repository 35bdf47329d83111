"""Write the VOC split files and check every label, as the reference's voc_annotation.py.

Lists ``VOC2007/SegmentationClass/*.png``, writes ``ImageSets/Segmentation/{trainval,train,
val,test}.txt``, prints how many pixels hold each value, and stops with one clear sentence when
the labels cannot train a model (RGB colour labels, 0/255 binary labels, labels that differ in
size from their image, missing images, only background).
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from utils.data.classes import default_class_names, mapping_lines, write_classes_file
from utils.data.datasets import DatasetLayout
from utils.data.splits import list_labels, write_splits
from utils.errors import UserError, exit_on_user_error
from utils.images import read_image, read_label_png
from utils.progress import progress
from utils.settings.cli import argument_parser


@dataclass
class LabelScan:
    """Pixel counts per label value over a data set, and the files that cannot be used."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    problems: list[str] = field(default_factory=list)
    label_paths: list[Path] = field(default_factory=list)
    #: the first label file holding each value
    where: dict[int, Path] = field(default_factory=dict)

    @property
    def values(self) -> np.ndarray:
        return np.flatnonzero(self.counts)

    @property
    def is_binary_0_255(self) -> bool:
        return set(self.values.tolist()) == {0, 255}


def scan_labels(dataset_path: str | Path, names: list[str]) -> LabelScan:
    """Read every image and label once, decoding all their pixels: the label's values and
    colour mode, and its size against its image's."""
    layout = DatasetLayout.of(dataset_path)
    image_paths = layout.image_files(names)
    scan = LabelScan(label_paths=[layout.labels / f"{name}.png" for name in names])
    for label_path, image_path in progress(
        list(zip(scan.label_paths, image_paths, strict=True)), desc="Checking labels"
    ):
        try:
            label = read_label_png(label_path)
        except UserError as error:
            scan.problems.append(str(error).rstrip("."))
            continue
        try:
            size = read_image(image_path).size  # decoded whole: truncation shows here
        except UserError as error:
            scan.problems.append(str(error).split("; ")[0])
            continue
        if label.shape != (size[1], size[0]):
            scan.problems.append(
                f"label '{label_path}' is {label.shape[1]}x{label.shape[0]} but image "
                f"'{image_path}' is {size[0]}x{size[1]}"
            )
            continue
        if label.max(initial=0) > 255:
            scan.problems.append(f"label '{label_path}' holds values above 255")
            continue
        counts = np.bincount(label.reshape(-1), minlength=256)
        for value in np.flatnonzero(counts).tolist():
            scan.where.setdefault(value, label_path)
        scan.counts += counts
    return scan


def print_value_table(counts: np.ndarray) -> None:
    print("Pixel count per label value:")
    print("-" * 37)
    print(f"| {'Key':>15} | {'Value':>15} |")
    print("-" * 37)
    for value in np.flatnonzero(counts):
        print(f"| {value:>15} | {counts[value]:>15} |")
        print("-" * 37)


def fix_binary(
    scan: LabelScan, dataset_path: str | Path, names: list[str], dry_run: bool = False
) -> None:
    """Rewrite 255 as 1 in every label that holds it, keeping each file's mode and palette.

    Each original is first copied to ``SegmentationClass_backup/``; ``dry_run`` only says
    which files it would rewrite.
    """
    to_fix = []
    for path in scan.label_paths:
        with Image.open(path) as image:
            if (np.array(image) == 255).any():
                to_fix.append(path)
    labels = DatasetLayout.of(dataset_path).labels
    backup = labels.with_name(labels.name + "_backup")
    verb = "would rewrite" if dry_run else "rewriting"
    print(
        f"--fix-binary: {verb} value 255 as 1 in {len(to_fix)} of {len(scan.label_paths)} "
        f"labels ({scan.counts[255]} pixels): label 255 becomes class 1 ({names[1]}), the object; "
        f"label 0 stays class 0 ({names[0]}), the background."
    )
    if dry_run:
        for path in to_fix:
            print(f"  would rewrite {path}")
        print(f"--dry-run: nothing was written; without it the originals go to {backup}/.")
        return
    backup.mkdir(exist_ok=True)
    for path in progress(to_fix, desc="Fixing labels"):
        shutil.copy2(path, backup / path.name)
        with Image.open(path) as image:
            palette = image.getpalette() if image.mode == "P" else None
            array = np.array(image)
        array[array == 255] = 1
        fixed = Image.fromarray(array)
        if palette is not None:
            fixed.putpalette(palette)
        fixed.save(path)
    print(f"The original labels are in {backup}/.")
    scan.counts[1] += scan.counts[255]
    scan.counts[255] = 0


def check_scan(
    scan: LabelScan,
    dataset_path: str | Path,
    fix: bool,
    names: list[str],
    dry_run: bool = False,
) -> None:
    """Turn what the scan found into one clear error, or fix 0/255 labels when asked."""
    if scan.problems:
        for problem in scan.problems[:10]:
            print(f"  {problem}")
        raise UserError(
            f"{len(scan.problems)} image/label pair(s) cannot be used (listed above), e.g. "
            f"{scan.problems[0]}; fix or remove them and run voc_annotation.py again."
        )
    if scan.is_binary_0_255:
        if fix:
            fix_binary(scan, dataset_path, names, dry_run)
            if dry_run:
                return
            print_value_table(scan.counts)
        else:
            raise UserError(
                f"the labels in {DatasetLayout.of(dataset_path).labels} hold only 0 and 255, but "
                "a two-class task needs 0 for background and 1 for the object; rerun with "
                "--fix-binary to rewrite 255 as 1."
            )
    elif fix:
        raise UserError(
            "--fix-binary only applies to labels holding just 0 and 255, but these hold "
            f"{', '.join(map(str, scan.values))}; run without --fix-binary."
        )
    if scan.values.tolist() == [0]:
        raise UserError(
            "every label holds only background (value 0); class indices must be written into "
            "the PNG pixel values (1, 2, ...), not only into its colours."
        )


def check_num_classes(scan: LabelScan, num_classes: int | None) -> None:
    """Every label value (255 aside) below ``num_classes``, or one sentence naming a file."""
    if num_classes is None:
        return
    over = [value for value in scan.values.tolist() if num_classes <= value != 255]
    if over:
        raise UserError(
            f"label '{scan.where[over[0]]}' holds value {over[0]}, but --num-classes {num_classes} "
            f"allows 0 to {num_classes - 1} (and 255, ignored); relabel it, or raise "
            "--num-classes."
        )


def class_names(scan: LabelScan, given: list[str] | None) -> list[str]:
    """``given`` (--name-classes), which must name every class the labels hold, or the default
    names of as many classes as the labels hold (two for 0/255 labels)."""
    classes = max(max((v for v in scan.values.tolist() if v != 255), default=0) + 1, 2)
    if given is None:
        return default_class_names(classes)
    if len(given) < classes:
        raise UserError(
            f"the labels hold label value {classes - 1}, but --name-classes names only "
            f"{len(given)} classes (0 to {len(given) - 1}); give one name per class."
        )
    return given


def get_parser() -> argparse.ArgumentParser:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--dataset-path", default="VOCdevkit", help="the VOCdevkit folder holding VOC2007/"
    )
    parser.add_argument(
        "--trainval-percent",
        type=float,
        default=1.0,
        help="share of the labelled images in trainval; the rest go to test",
    )
    parser.add_argument(
        "--train-percent", type=float, default=0.9, help="share of trainval in train; rest is val"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the split")
    parser.add_argument(
        "--fix-binary",
        action="store_true",
        help="rewrite 255 as 1 in labels that hold only 0 and 255 (binary tasks need 0/1); "
        "the originals are copied to SegmentationClass_backup/ first",
    )
    parser.add_argument(
        "--name-classes",
        nargs="+",
        default=None,
        help="class names, to print which label value is which class (default: class_0, "
        "class_1, ..., or the 21 VOC names for 21 classes)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes the model will have, background included: every label value must be "
        "below it (255, the ignored border, aside) (default: not checked)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="write nothing: no split files, and --fix-binary only lists what it would rewrite",
    )
    return parser


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_parser()
    args = parser.parse_args(argv)
    for flag in ("trainval_percent", "train_percent"):
        if not 0 <= getattr(args, flag) <= 1:
            parser.error(f"--{flag.replace('_', '-')} must be between 0 and 1")
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    if args.dry_run:
        print("--dry-run: the split files are not written.")
    else:
        print("Generate txt in ImageSets.")
    splits = write_splits(
        args.dataset_path,
        args.trainval_percent,
        args.train_percent,
        args.seed,
        write=not args.dry_run,
    )
    sizes = ", ".join(f"{split} {len(ids)}" for split, ids in splits.items())
    print(f"Generate txt in ImageSets done: {sizes}." if not args.dry_run else f"Split: {sizes}.")
    print("Check datasets format, this may take a while.")
    scan = scan_labels(args.dataset_path, list_labels(args.dataset_path))
    print_value_table(scan.counts)
    check_num_classes(scan, args.num_classes)
    names = class_names(scan, args.name_classes)
    check_scan(scan, args.dataset_path, args.fix_binary, names, args.dry_run)
    if args.name_classes and not args.dry_run:
        folder = DatasetLayout.of(args.dataset_path).images.parent
        written = write_classes_file(folder, names, scan.values.tolist())
        print(f"Class names saved to {written}; train.py takes them from there.")
    if not (args.fix_binary and args.dry_run):
        print("Classes (label value -> class -> name, share of all pixels):")
        print("\n".join(mapping_lines(scan.counts, names)))
        print(
            "Labels look fine: JPEGImages hold the images, SegmentationClass the class-index PNGs."
        )


if __name__ == "__main__":
    main()
