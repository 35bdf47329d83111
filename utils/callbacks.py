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

    def append_miou(self, epoch: int, miou: float) -> None:
        self.history["miou"].append(miou)
        self.history["miou_epochs"].append(epoch)
        self.writer.add_scalar("miou", miou, epoch)
        self._write("epoch_miou.txt", self.history["miou"])
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
