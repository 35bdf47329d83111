"""What a training run writes about itself: loss and mIoU text files, curves and TensorBoard."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from utils.classes import class_colors, enlarge, grid, overlay
from utils.utils import optional_import

#: TensorBoard tags: each class's IoU is ``iou/<name>``; the val samples one image.
IOU_TAG = "iou"
SAMPLES_TAG = "val_samples"


def _smooth(values: list[float]) -> np.ndarray | None:
    """The reference's Savitzky-Golay smoothing (window 5, or 15 from 25 points on)."""
    import scipy.signal

    window = 5 if len(values) < 25 else 15
    if len(values) < window:
        return None
    return scipy.signal.savgol_filter(values, window, 3)


class TrainingLog:
    """``loss_<time>/``: ``epoch_loss.txt``, ``epoch_val_loss.txt``, ``epoch_loss.png``,
    ``epoch_miou.txt``, ``epoch_miou.png`` and TensorBoard: loss, val_loss, lr, miou, each
    class's IoU, and a picture of val predictions at every mIoU.

    Text files are rewritten whole from the history, so a resumed run continues them without
    gaps or repeated lines.
    """

    def __init__(
        self,
        log_dir: str | Path,
        history: dict | None = None,
        class_names: Sequence[str] = (),
    ):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.history = history or {"loss": [], "val_loss": [], "miou": [], "miou_epochs": []}
        self.class_names = list(class_names)
        tensorboard = optional_import(
            "torch.utils.tensorboard", "tensorboard", "no TensorBoard events are written"
        )
        self.writer = tensorboard.SummaryWriter(str(self.log_dir)) if tensorboard else None
        if self.writer is not None:  # the classes' IoU in one chart (the Custom Scalars tab)
            chart = {"IoU of each class": ["Multiline", [f"{IOU_TAG}/.*"]]}
            self.writer.add_custom_scalars({"per-class IoU": chart})

    def append_loss(
        self, epoch: int, loss: float, val_loss: float | None, lr: float | None = None
    ) -> None:
        self.history["loss"].append(loss)
        self._scalar("loss", loss, epoch)
        if lr is not None:
            self._scalar("lr", lr, epoch)
        self._write("epoch_loss.txt", self.history["loss"])
        if val_loss is not None:
            self.history["val_loss"].append(val_loss)
            self._scalar("val_loss", val_loss, epoch)
            self._write("epoch_val_loss.txt", self.history["val_loss"])
        self._plot_loss()

    def append_miou(
        self,
        epoch: int,
        miou: float,
        best: bool | None = None,
        class_iou: Sequence[float] | None = None,
    ) -> None:
        """Log an epoch's mIoU, and each class's IoU (in TensorBoard, ``iou/<name>``);
        ``best`` (with --save-best-by miou) marks the epoch that best_epoch_weights.pth holds,
        named in a last ``#`` line of ``epoch_miou.txt``."""
        for name, value in zip(
            self.class_names, class_iou if class_iou is not None else (), strict=False
        ):
            if not np.isnan(value):  # absent from labels and predictions: no IoU
                self._scalar(f"{IOU_TAG}/{name}", 100 * float(value), epoch)
        self.history["miou"].append(miou)
        self.history["miou_epochs"].append(epoch)
        if best:
            self.history["best_miou_epoch"] = epoch
        self._scalar("miou", miou, epoch)
        self._write("epoch_miou.txt", self.history["miou"])
        best_epoch = self.history.get("best_miou_epoch")
        if best is not None and best_epoch is not None:
            best_miou = self.history["miou"][self.history["miou_epochs"].index(best_epoch)]
            with open(self.log_dir / "epoch_miou.txt", "a") as f:
                f.write(f"# best_epoch_weights.pth: epoch {best_epoch}, mIoU {best_miou}\n")
        fig = self.miou_figure()
        if fig is not None:
            fig.savefig(self.log_dir / "epoch_miou.png")

    def miou_figure(self):
        """The mIoU curve (a matplotlib Figure; None without matplotlib)."""
        fig, axes = self._figure()
        if fig is None:
            return None
        axes.plot(
            self.history["miou_epochs"],
            self.history["miou"],
            "red",
            lw=2,
            label="val mIoU",
            marker="o",
        )
        axes.set_xlabel("Epoch")
        axes.set_ylabel("mIoU (%)")
        axes.set_title("The val split's mIoU, as get_miou.py computes it")
        axes.legend(loc="lower right")  # the curve rises: its last points are at the top
        return fig

    def add_samples(self, epoch: int, picture: np.ndarray) -> None:
        """An (H, W, 3) picture of val images, labels and predictions, in TensorBoard."""
        if self.writer is not None:
            self.writer.add_image(SAMPLES_TAG, picture, epoch, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _scalar(self, tag: str, value: float, epoch: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, epoch)

    def _write(self, name: str, values: list[float]) -> None:
        (self.log_dir / name).write_text("".join(f"{v}\n" for v in values))

    @staticmethod
    def _figure():
        figure = optional_import("matplotlib.figure", "matplotlib", "no curves are drawn")
        if figure is None:
            return None, None
        fig = figure.Figure()
        axes = fig.add_subplot()
        axes.grid(True)
        return fig, axes

    def _plot_loss(self) -> None:
        fig = self.loss_figure()
        if fig is not None:
            fig.savefig(self.log_dir / "epoch_loss.png")

    def loss_figure(self):
        """The train (and val) loss curves, raw and smoothed (a matplotlib Figure; None without
        matplotlib)."""
        fig, axes = self._figure()
        if fig is None:
            return None
        curves = [("loss", "train loss", "red", "green")]
        if self.history["val_loss"]:
            curves.append(("val_loss", "val loss", "coral", "#8B4513"))
        for key, label, color, smooth_color in curves:
            values = self.history[key]
            epochs = range(1, len(values) + 1)
            axes.plot(epochs, values, color, linewidth=2, label=label)
            smooth = _smooth(values)
            if smooth is not None:
                axes.plot(
                    epochs, smooth, smooth_color, linestyle="--", lw=2, label=f"smooth {label}"
                )
        axes.set_xlabel("Epoch")
        axes.set_ylabel("Loss")
        axes.legend(loc="upper right")
        return fig


def save_augmented_samples(
    dataset, count: int, path: str | Path, epoch: int = 0, min_side: int = 256
) -> Path:
    """A picture of ``count`` training samples as the model sees them (augmented, at the input
    size), each beside its label in the overlay colours (the ignore value white), enlarged
    nearest-neighbour to at least ``min_side`` pixels on the short side, two samples a row."""
    colors = class_colors(dataset.num_classes)
    tiles = []
    for index in range(count):
        image, label = dataset[(epoch, index % len(dataset))]
        image = enlarge(image.permute(1, 2, 0).numpy(), min_side)
        label = enlarge(label.numpy().astype(np.uint8), min_side)
        tiles += [image, np.asarray(overlay(image, label, colors))]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid([tiles[i : i + 4] for i in range(0, len(tiles), 4)])).save(path)
    return path
