"""VOC and medical segmentation datasets: the layouts, what is wrong with them, and the loaders.

One :class:`UnetDataset` serves both layouts, checked as it loads, augmented by
:mod:`utils.data.augment`. Samples are ``(image, label)``: a (3, H, W) uint8 image (the model
input is ``image / 255``, taken on the training device) and an (H, W) uint8 label where values
>= ``num_classes`` become the ignore value ``num_classes`` (made long on the device: int64
labels would be 8 times the bytes through the workers' shared memory); with border weights
(``--loss border_ce``), ``(image, label, weights)``, an (H, W) uint8 map moved with the label
(:mod:`utils.data.border_weights`). The Dice one-hot target is built on the device
(``nets.losses.one_hot_target``), not here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from utils.data.augment import AUGMENTATIONS
from utils.data.border_weights import check_binary, quantized_weights
from utils.distributed import SINGLE_PROCESS, DistInfo
from utils.errors import UserError
from utils.images import read_image, read_label_png, stack_images
from utils.progress import progress
from utils.seeding import one_opencv_thread_per_worker, seed_worker

DATASET_FORMATS = ("voc", "medical")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
#: How many images are fully decoded before training (every label is read); the rest are
#: decoded as they load.
CHECK_SAMPLE = 32


@dataclass(frozen=True)
class DatasetLayout:
    """Where a data set's images, labels and split files live."""

    root: Path
    images: Path
    labels: Path
    splits: Path

    @classmethod
    def of(cls, dataset_path: str | Path, dataset_format: str = "voc") -> DatasetLayout:
        root = Path(dataset_path)
        if dataset_format == "voc":
            base = root / "VOC2007"
            labels, splits = base / "SegmentationClass", base / "ImageSets/Segmentation"
            return cls(root, base / "JPEGImages", labels, splits)
        if dataset_format == "medical":
            return cls(root, root / "Images", root / "Labels", root / "ImageSets/Segmentation")
        raise UserError(
            f"unknown dataset format {dataset_format!r}; use one of {', '.join(DATASET_FORMATS)}."
        )

    def split_file(self, split: str) -> Path:
        return self.splits / f"{split}.txt"

    def image_files(self, names: Sequence[str]) -> list[Path]:
        """The image of each id (any of :data:`IMAGE_EXTENSIONS`), or one sentence."""
        return resolve_files(self.images, names, IMAGE_EXTENSIONS, "image")

    def label_files(self, names: Sequence[str]) -> list[Path]:
        """The PNG label of each id, or one sentence."""
        return resolve_files(self.labels, names, (".png",), "label")


def is_split_path(split: str) -> bool:
    """Whether ``split`` names a file (has a ``/`` or ends in ``.txt``) rather than a split."""
    return split.endswith(".txt") or "/" in split or os.sep in split


def split_path(dataset_path: str | Path, split: str, dataset_format: str = "voc") -> Path:
    """A split name (``train``, ``val``, ...) under ImageSets/Segmentation, or a file's path.

    A path lets a split live outside the data set, e.g. a fixed hold-out for read-only data.
    """
    if is_split_path(split):
        return Path(split)
    return DatasetLayout.of(dataset_path, dataset_format).split_file(split)


def read_split(dataset_path: str | Path, split: str, dataset_format: str = "voc") -> list[str]:
    """The ids in a split file (see :func:`split_path`); an absent or empty file is an error."""
    path = split_path(dataset_path, split, dataset_format)
    if not path.is_file():
        if is_split_path(split):
            raise UserError(f"split file '{path}' does not exist; check the path.")
        why = explain_dataset_path(dataset_path, dataset_format)
        raise UserError(f"split file '{path}' does not exist; {why}")
    names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise UserError(f"split file '{path}' lists no images; add ids to it (one per line).")
    return names


def explain_dataset_path(
    dataset_path: str | Path, dataset_format: str = "voc", missing: Path | None = None
) -> str:
    """What is wrong with a --dataset-path whose ``missing`` folder (default: the split files')
    is not where the layout puts it, judged from what is there, and the fix."""
    root = Path(dataset_path)
    medical = ("Images", "Labels")
    voc = ("JPEGImages", "SegmentationClass")
    if not root.is_dir():
        return f"--dataset-path '{root}' does not exist; check it."
    if dataset_format == "voc" and (root / "VOCdevkit" / "VOC2007").is_dir():
        return f"--dataset-path '{root}' holds VOCdevkit/; point it at '{root / 'VOCdevkit'}'."
    if dataset_format == "voc" and all((root / name).is_dir() for name in voc):
        return (
            f"--dataset-path '{root}' is the VOC2007 folder itself; point it at its parent "
            f"'{root.parent}'."
        )
    if dataset_format == "voc" and all((root / name).is_dir() for name in medical):
        return (
            f"'{root}' holds Images/ and Labels/, the medical layout; add --dataset-format medical."
        )
    if dataset_format == "medical" and (root / "VOC2007").is_dir():
        return f"'{root}' holds VOC2007/, the VOC layout; use --dataset-format voc."
    layout = DatasetLayout.of(root, dataset_format)
    expected = (missing or layout.splits).relative_to(root).as_posix() + "/"
    found = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in root.iterdir())
    listing = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "") if found else "nothing"
    if dataset_format == "voc" and layout.labels.is_dir():
        fix = f"run voc_annotation.py --dataset-path '{root}' to write the split files"
    elif dataset_format == "voc":
        fix = "point --dataset-path at the folder that holds VOC2007/ (usually VOCdevkit)"
    else:
        fix = "write the ids to train on in ImageSets/Segmentation/train.txt, one per line"
    return f"--dataset-path '{root}' should hold {expected} (found: {listing}); {fix}."


def check_split_size(num_images: int, batch_size: int, split: str) -> None:
    """A split must fill at least one batch: the reference drops the last partial batch."""
    if num_images < batch_size:
        images = "image" if num_images == 1 else "images"
        raise UserError(
            f"the {split} split has {num_images} {images}, fewer than the batch size "
            f"{batch_size}; lower the batch size to at most {num_images} or add {split} images."
        )


def resolve_files(
    folder: Path, names: Sequence[str], extensions: Sequence[str], role: str
) -> list[Path]:
    """The file of each id in ``folder`` (first matching extension wins), from one listing."""
    if not folder.is_dir():
        raise UserError(f"the {role} folder {folder} is missing; check --dataset-path.")
    by_stem: dict[str, dict[str, str]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            by_stem.setdefault(stem, {})[ext.lower()] = entry.name
    paths, missing = [], []
    for name in names:
        found = by_stem.get(name, {})
        file_name = next((found[ext] for ext in extensions if ext in found), None)
        if file_name is None:
            missing.append(name)
        else:
            paths.append(folder / file_name)
    if missing:
        name = missing[0]
        others = sorted(by_stem.get(name, {}).values())
        hint = (
            f"found {others[0]}, but {role}s must be {' or '.join(extensions)}"
            if others
            else "add the files or remove their ids from the split file"
        )
        raise UserError(
            f"{len(missing)} {role} file(s) listed in the split are missing, e.g. "
            f"{folder / name}{extensions[0]}; {hint}."
        )
    return paths


def read_class_label(path: Path, num_classes: int, dataset_format: str = "voc") -> np.ndarray:
    """A label file as (H, W) uint8 class indices: the pixel values (255: ignored), checked
    against ``num_classes``; in the medical layout, 1 where the grey label is <= 127.5."""
    if dataset_format == "medical":
        return (read_label_png(path, grayscale=True) <= 127.5).astype(np.uint8)
    label = read_label_png(path)
    # 255 marks pixels to ignore; any other value past the last class is a mistake.
    if label.max(initial=0) >= num_classes:
        bad = label[(label >= num_classes) & (label != 255)]
        if bad.size:
            value = int(bad.max())
            raise UserError(
                f"label {path} holds class {value} but num_classes is {num_classes}; set "
                f"--num-classes to at least {value + 1} or fix the label (255 marks pixels to "
                "ignore)."
            )
    return label.astype(np.uint8)


def label_reader_pool() -> ThreadPoolExecutor:
    """Threads that read every label of a data set: one a core, at most 8."""
    return ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)))


class UnetDataset(Dataset):
    """Images and class-index labels of a VOC or medical layout, letterboxed or augmented.

    Construction checks that every listed file exists, reads every label (values and size)
    and fully decodes a sample of :data:`CHECK_SAMPLE` images; each item is checked again as
    it loads. Training samples get the ``augment`` augmentation (one of
    :data:`AUGMENTATIONS`). Augmentation draws
    from a generator keyed by ``(seed, epoch, index)``: every sample, worker and epoch differs,
    and the same seed repeats a run exactly whatever the number of workers. The epoch comes
    with each index from an :class:`EpochSampler` (``dataset[(epoch, index)]``), so persistent
    workers see it; a plain index uses :meth:`set_epoch`'s.
    """

    def __init__(
        self,
        annotation_lines: Sequence[str],
        input_shape: Sequence[int],
        num_classes: int,
        train: bool,
        dataset_path: str | Path,
        dataset_format: str = "voc",
        seed: int = 0,
        check_sample: int = CHECK_SAMPLE,
        augment: str = "reference",
        crop: bool = False,
        border_weights: bool = False,
    ):
        super().__init__()
        self.names = [line.split()[0] for line in annotation_lines if line.strip()]
        self.input_shape = (int(input_shape[0]), int(input_shape[1]))
        self.num_classes = num_classes
        self.train = train
        self.dataset_format = dataset_format
        self.layout = DatasetLayout.of(dataset_path, dataset_format)
        self.seed = seed
        self.epoch = 0
        if augment not in AUGMENTATIONS:
            raise UserError(
                f"unknown augmentation {augment!r}; use one of {', '.join(AUGMENTATIONS)}."
            )
        self.augment = augment
        self.crop = crop
        self.label_lut = np.minimum(np.arange(256), num_classes).astype(np.uint8)
        if not self.names:
            raise UserError(f"no images to load from {self.layout.root}; the split list is empty.")
        self.image_paths = self.layout.image_files(self.names)
        self.label_paths = self.layout.label_files(self.names)
        if check_sample:
            self.check(check_sample)
        #: each label's uint8 weight map for the ``border_ce`` loss, or None
        self.border_maps = self.compute_border_maps() if border_weights else None

    def __len__(self) -> int:
        return len(self.names)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def read_pair(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The RGB image and its checked class-index label (medical: 1 where <= 127.5)."""
        image = read_image(self.image_paths[index])
        label_path = self.label_paths[index]
        label = read_class_label(label_path, self.num_classes, self.dataset_format)
        self._check_size(index, label, image.size)
        return image, label

    def _check_size(self, index: int, label: np.ndarray, size: tuple[int, int]) -> None:
        """A label must have its image's (width, height) ``size``."""
        if label.shape != (size[1], size[0]):
            raise UserError(
                f"label {self.label_paths[index]} is {label.shape[1]}x{label.shape[0]} but image "
                f"{self.image_paths[index]} is {size[0]}x{size[1]}; a label must have its "
                "image's size (re-export it from that image)."
            )

    def check(self, sample: int = CHECK_SAMPLE) -> None:
        """Read every label (its values against ``num_classes``, its size against its image's
        header) and fully decode an evenly spread sample of ``sample`` images, in a thread per
        core; keep the labels' value counts in ``label_counts`` for the table of which value is
        which class, and the time it took in ``check_seconds``."""
        start = time.perf_counter()
        decoded = set(np.linspace(0, len(self) - 1, min(sample, len(self))).astype(int).tolist())
        with label_reader_pool() as pool:
            counts = sum(pool.map(lambda i: self._label_counts(i, i in decoded), range(len(self))))
        #: pixels per label value (medical: per class) over every label, and how many
        self.label_counts, self.checked = counts, len(self)
        self.check_seconds = time.perf_counter() - start
        seen = counts > 0
        if self.dataset_format == "voc" and seen[255] and seen[0] and not seen[1:255].any():
            raise UserError(
                f"the labels in {self.layout.labels} hold only 0 and 255 (checked "
                f"{len(self)}); a two-class task needs 0 for background and 1 for the object: "
                f"run voc_annotation.py --dataset-path {self.layout.root} --fix-binary."
            )

    def _label_counts(self, index: int, decode: bool) -> np.ndarray:
        """One label's value counts, checked against its image (fully decoded with
        ``decode``, else its size read from the header)."""
        if decode:
            _, label = self.read_pair(index)
            return np.bincount(label.reshape(-1), minlength=256)
        label = read_class_label(self.label_paths[index], self.num_classes, self.dataset_format)
        try:
            with Image.open(self.image_paths[index]) as image:
                size = image.size
        except OSError:
            return self._label_counts(index, decode=True)  # read_pair says what is wrong
        self._check_size(index, label, size)
        return np.bincount(label.reshape(-1), minlength=256)

    def compute_border_maps(self) -> list[np.ndarray]:
        """Every label's weight map for the ``border_ce`` loss, computed once, in a thread per
        core; a grey (not binary) label stops with the file's name."""

        def weights(index: int) -> np.ndarray:
            path = self.label_paths[index]
            if self.dataset_format == "medical":
                check_binary(read_label_png(path, grayscale=True), path)
            classes = read_class_label(path, self.num_classes, self.dataset_format)
            return quantized_weights(classes, self.dataset_format)

        with label_reader_pool() as pool:
            maps = pool.map(weights, range(len(self)))
            return list(progress(maps, total=len(self), desc="border weights"))

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, index])

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        image, label = self.read_pair(index)
        augment = AUGMENTATIONS[self.augment if self.train else "none"]
        rng, crop = self.rng(index, epoch), self.crop and self.train
        path = self.image_paths[index]
        sample = augment.apply(image, label, self.input_shape, rng, crop=crop, path=path)
        # values >= num_classes (the 255 border) become the ignore index num_classes
        out = (
            torch.from_numpy(sample[0]).permute(2, 0, 1),
            torch.from_numpy(self.label_lut[sample[1]]),
        )
        if self.border_maps is None:
            return out
        # the weight map moved as the label was: the same augmentation, the same draws
        rng = self.rng(index, epoch)
        _, weights = augment.apply(
            image, self.border_maps[index], self.input_shape, rng, crop=crop, path=path
        )
        return (*out, torch.from_numpy(weights))


def unet_dataset_collate(batch):
    """Stack samples into a channels-last (N, 3, H, W) uint8 image batch (see
    :func:`~utils.images.stack_images`) and a (N, H, W) uint8 label batch (and, with border
    weights, a (N, H, W) uint8 batch of them)."""
    images, labels, *weights = zip(*batch, strict=True)
    return stack_images(images), torch.stack(labels), *map(torch.stack, weights)


class EpochSampler(Sampler):
    """Yield ``(epoch, index)`` from ``sampler``: the epoch travels with every index, so
    persistent DataLoader workers augment each epoch differently without being told."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class Loaders:
    """The train and val DataLoaders of one phase (batch size); rebuilt when the phase changes.

    Workers persist across the phase's epochs, batches are pinned for CUDA, and the shuffle
    order and augmentation depend on ``(seed, epoch)`` only: resumable and repeatable.
    """

    def __init__(
        self,
        train_set: UnetDataset,
        val_set: UnetDataset | None,
        *,
        batch_size: int,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        dist_info: DistInfo = SINGLE_PROCESS,
        pin_memory: bool = False,
    ):
        val_batch_size = val_batch_size or batch_size
        self.train_steps = len(train_set) // batch_size
        self.val_steps = len(val_set) // val_batch_size if val_set is not None else 0
        self.seed = seed
        self.generator = torch.Generator()
        if dist_info.enabled:
            sampler = DistributedSampler(train_set, shuffle=True, seed=seed)
        else:
            sampler = RandomSampler(train_set, generator=self.generator)
        self.sampler = EpochSampler(sampler)
        one_opencv_thread_per_worker(num_workers)
        options = dict(
            batch_size=batch_size // dist_info.world_size,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=pin_memory,
            drop_last=True,
            collate_fn=unet_dataset_collate,
            worker_init_fn=seed_worker,
        )
        self.train = DataLoader(train_set, sampler=self.sampler, **options)
        self.val = None
        if val_set is not None:
            sampler = DistributedSampler(val_set, shuffle=False) if dist_info.enabled else None
            options["batch_size"] = val_batch_size // dist_info.world_size
            self.val = DataLoader(val_set, shuffle=False, sampler=sampler, **options)

    def close(self) -> None:
        """End the worker processes now (a phase's end, Ctrl-C, SIGTERM), not when the
        loaders are collected."""
        for loader in (self.train, self.val):
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            if loader is not None:
                loader._iterator = None

    def set_epoch(self, epoch: int) -> None:
        """Shuffle order and augmentation of ``epoch``."""
        self.train.dataset.set_epoch(epoch)
        self.generator.manual_seed(self.seed + epoch)
        # Earlier versions let the DataLoader draw its workers' base seed from this generator
        # before the shuffle; drawing it here keeps their shuffle orders, hence their results.
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        self.sampler.set_epoch(epoch)
