"""Write the VOC split files and check every label, as the reference's voc_annotation.py.

Lists ``VOC2007/SegmentationClass/*.png``, writes ``ImageSets/Segmentation/{trainval,train,
val,test}.txt``, prints how many pixels hold each value, and stops with one clear sentence when
the labels cannot train a model (RGB colour labels, 0/255 binary labels, labels that differ in
size from their image, missing images, only background).
"""

from __future__ import annotations

import argparse
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils.cli import argument_parser
from utils.dataloader import IMAGE_EXTENSIONS, DatasetLayout, resolve_files
from utils.errors import UserError, exit_on_user_error
from utils.utils import read_label_png

SPLITS = ("trainval", "train", "val", "test")


def list_labels(dataset_path: str | Path) -> list[str]:
    """The ids of ``SegmentationClass/*.png``, sorted so the split is the same on every machine."""
    folder = DatasetLayout.of(dataset_path).labels
    if not folder.is_dir():
        raise UserError(f"the label folder {folder} is missing; check --dataset-path.")
    names = sorted(p.stem for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not names:
        raise UserError(f"{folder} holds no .png labels; labels must be PNG files.")
    return names


def write_splits(
    dataset_path: str | Path,
    trainval_percent: float = 1.0,
    train_percent: float = 0.9,
    seed: int = 0,
    write: bool = True,
) -> dict[str, list[str]]:
    """Split the labelled ids with the reference's sampling and write the four split files
    (unless ``write`` is off)."""
    names = list_labels(dataset_path)
    num = len(names)
    tv = int(num * trainval_percent)
    tr = int(tv * train_percent)
    random.seed(seed)
    trainval = random.sample(range(num), tv)
    train = set(random.sample(trainval, tr))
    trainval = set(trainval)
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    for i, name in enumerate(names):
        if i in trainval:
            splits["trainval"].append(name)
            splits["train" if i in train else "val"].append(name)
        else:
            splits["test"].append(name)
    if not write:
        return splits
    out = DatasetLayout.of(dataset_path).splits
    out.mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        (out / f"{split}.txt").write_text("".join(f"{name}\n" for name in ids))
    return splits


@dataclass
class LabelScan:
    """Pixel counts per label value over a data set, and the files that cannot be used."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    problems: list[str] = field(default_factory=list)
    label_paths: list[Path] = field(default_factory=list)

    @property
    def values(self) -> np.ndarray:
        return np.flatnonzero(self.counts)

    @property
    def is_binary_0_255(self) -> bool:
        return set(self.values.tolist()) == {0, 255}


def scan_labels(dataset_path: str | Path, names: list[str]) -> LabelScan:
    """Read every label once: values, colour mode, and size against its image's header."""
    layout = DatasetLayout.of(dataset_path)
    image_paths = resolve_files(layout.images, names, IMAGE_EXTENSIONS, "image")
    scan = LabelScan(label_paths=[layout.labels / f"{name}.png" for name in names])
    for label_path, image_path in tqdm(
        list(zip(scan.label_paths, image_paths, strict=True)), desc="Checking labels"
    ):
        try:
            label = read_label_png(label_path)
        except UserError as error:
            scan.problems.append(str(error).rstrip("."))
            continue
        try:
            with Image.open(image_path) as image:
                size = image.size
        except OSError as error:
            reason = str(error).rstrip(".")
            scan.problems.append(f"image file '{image_path}' cannot be read ({reason})")
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
        scan.counts += np.bincount(label.reshape(-1), minlength=256)
    return scan


def print_value_table(counts: np.ndarray) -> None:
    print("Pixel count per label value:")
    print("-" * 37)
    print(f"| {'Key':>15} | {'Value':>15} |")
    print("-" * 37)
    for value in np.flatnonzero(counts):
        print(f"| {value:>15} | {counts[value]:>15} |")
        print("-" * 37)


def fix_binary(scan: LabelScan, dataset_path: str | Path, dry_run: bool = False) -> None:
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
        f"labels ({scan.counts[255]} pixels); value 0 stays background."
    )
    if dry_run:
        for path in to_fix:
            print(f"  would rewrite {path}")
        print(f"--dry-run: nothing was written; without it the originals go to {backup}/.")
        return
    backup.mkdir(exist_ok=True)
    for path in tqdm(to_fix, desc="Fixing labels"):
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


def check_scan(scan: LabelScan, dataset_path: str | Path, fix: bool, dry_run: bool = False) -> None:
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
            fix_binary(scan, dataset_path, dry_run)
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
        args.dataset_path, args.trainval_percent, args.train_percent, args.seed,
        write=not args.dry_run,
    )  # fmt: skip
    sizes = ", ".join(f"{split} {len(ids)}" for split, ids in splits.items())
    print(f"Generate txt in ImageSets done: {sizes}." if not args.dry_run else f"Split: {sizes}.")
    print("Check datasets format, this may take a while.")
    scan = scan_labels(args.dataset_path, list_labels(args.dataset_path))
    print_value_table(scan.counts)
    check_scan(scan, args.dataset_path, args.fix_binary, args.dry_run)
    if not (args.fix_binary and args.dry_run):
        print("Labels look fine: JPEGImages hold the images, SegmentationClass the class-index "
              "PNGs.")  # fmt: skip


if __name__ == "__main__":
    main()
