"""What a training run writes about itself: loss and mIoU text files, curves and TensorBoard."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _smooth(values: list[float]) -> np.ndarray | None:
    """The reference's Savitzky-Golay smoothing (window 5, or 15 from 25 points on)."""
    import scipy.signal

    window = 5 if len(values) < 25 else 15
    if len(values) < window:
        return None
    return scipy.signal.savgol_filter(values, window, 3)


class TrainingLog:
    """``loss_<time>/``: ``epoch_loss.txt``, ``epoch_val_loss.txt``, ``epoch_loss.png``,
    ``epoch_miou.txt``, ``epoch_miou.png`` and TensorBoard scalars.

    Text files are rewritten whole from the history, so a resumed run continues them without
    gaps or repeated lines.
    """

    def __init__(self, log_dir: str | Path, history: dict | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.history = history or {"loss": [], "val_loss": [], "miou": [], "miou_epochs": []}
        self.writer = SummaryWriter(str(self.log_dir))

    def append_loss(self, epoch: int, loss: float, val_loss: float | None) -> None:
        self.history["loss"].append(loss)
        self.writer.add_scalar("loss", loss, epoch)
        self._write("epoch_loss.txt", self.history["loss"])
        if val_loss is not None:
            self.history["val_loss"].append(val_loss)
            self.writer.add_scalar("val_loss", val_loss, epoch)
            self._write("epoch_val_loss.txt", self.history["val_loss"])
        self._plot_loss()

    def append_miou(self, epoch: int, miou: float, best: bool | None = None) -> None:
        """Log an epoch's mIoU; ``best`` (with --save-best-by miou) marks the epoch that
        best_epoch_weights.pth holds, named in a last ``#`` line of ``epoch_miou.txt``."""
        self.history["miou"].append(miou)
        self.history["miou_epochs"].append(epoch)
        if best:
            self.history["best_miou_epoch"] = epoch
        self.writer.add_scalar("miou", miou, epoch)
        self._write("epoch_miou.txt", self.history["miou"])
        best_epoch = self.history.get("best_miou_epoch")
        if best is not None and best_epoch is not None:
            best_miou = self.history["miou"][self.history["miou_epochs"].index(best_epoch)]
            with open(self.log_dir / "epoch_miou.txt", "a") as f:
                f.write(f"# best_epoch_weights.pth: epoch {best_epoch}, mIoU {best_miou}\n")
        fig, axes = self._figure()
        axes.plot(
            self.history["miou_epochs"], self.history["miou"], "red", lw=2, label="train miou"
        )
        axes.set_xlabel("Epoch")
        axes.set_ylabel("Miou")
        axes.set_title("A Miou Curve")
        axes.legend(loc="upper right")
        fig.savefig(self.log_dir / "epoch_miou.png")

    def close(self) -> None:
        self.writer.close()

    def _write(self, name: str, values: list[float]) -> None:
        (self.log_dir / name).write_text("".join(f"{v}\n" for v in values))

    @staticmethod
    def _figure():
        from matplotlib.figure import Figure

        fig = Figure()
        axes = fig.add_subplot()
        axes.grid(True)
        return fig, axes

    def _plot_loss(self) -> None:
        fig, axes = self._figure()
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
        fig.savefig(self.log_dir / "epoch_loss.png")


def save_augmented_samples(dataset, count: int, path: str | Path, epoch: int = 0) -> Path:
    """A picture of ``count`` training samples as the model sees them (augmented, at the input
    size), each beside its label drawn over it; the ignore value shows white."""
    from PIL import Image

    from utils.utils import voc_palette

    colours = np.array(voc_palette(256), dtype=np.float32)
    colours[dataset.num_classes] = 255  # the ignore index
    tiles = []
    for index in range(count):
        image, label = dataset[(epoch, index % len(dataset))]
        image = image.permute(1, 2, 0).numpy().astype(np.float32)
        overlay = 0.5 * image + 0.5 * colours[label.numpy()]
        tiles.append(np.concatenate([image, overlay], axis=1))
    gap = np.full((4, *tiles[0].shape[1:]), 255, np.float32)
    columns = [tiles[i : i + 4] for i in range(0, len(tiles), 4)]
    rows = [np.concatenate([t for tile in col for t in (tile, gap)][:-1], axis=0)
            for col in columns]  # fmt: skip
    height = max(r.shape[0] for r in rows)
    rows = [np.pad(r, ((0, height - r.shape[0]), (0, 8), (0, 0)), constant_values=255)
            for r in rows]  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=1).astype(np.uint8)).save(path)
    return path
