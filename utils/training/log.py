"""What a training run writes about itself: loss and mIoU text files, curves and TensorBoard."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from utils.data.classes import class_colors
from utils.drawing import enlarge, grid, overlay
from utils.errors import optional_import
from utils.training.writer import write_durably, write_text_durably

#: TensorBoard tags: each class's IoU is ``iou/<name>``; the val samples one image.
IOU_TAG = "iou"
SAMPLES_TAG = "val_samples"
#: TensorBoard text tag of the classes never found at an evaluation.
WARNINGS_TAG = "never_found"
#: While a run trains, its curves are drawn at most this often (seconds; the first this long after
#: it starts, so a short run imports matplotlib only to draw them once at its end); always at
#: its end.
PLOT_SECONDS = 30.0


def savgol_filter(values: Sequence[float], window: int, order: int = 3) -> np.ndarray:
    """``scipy.signal.savgol_filter(values, window, order)`` (odd ``window``, its default
    ``mode="interp"``) in NumPy: importing scipy.signal takes longer than a short run's epoch.
    Inside, each value is the least-squares polynomial of the window around it at its centre;
    the first and last ``window // 2`` values are the polynomial fitted to the first and last
    windows."""
    x = np.asarray(values, dtype=np.float64)
    half = window // 2
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    centre = np.linalg.pinv(np.vander(offsets, order + 1, increasing=True))[0]
    smooth = np.convolve(x, centre[::-1], mode="same")
    positions = np.arange(window, dtype=np.float64)
    ends = ((slice(0, window), slice(0, half)), (slice(-window, None), slice(-half, None)))
    for part, where in ends:
        fit = np.polyfit(positions, x[part], order)
        smooth[where] = np.polyval(fit, positions[where])
    return smooth


def _smooth(values: list[float]) -> np.ndarray | None:
    """The reference's Savitzky-Golay smoothing (window 5, or 15 from 25 points on)."""
    window = 5 if len(values) < 25 else 15
    if len(values) < window:
        return None
    return savgol_filter(values, window, 3)


def empty_history() -> dict:
    return {"loss": [], "val_loss": [], "miou": [], "miou_epochs": []}


class TrainingLog:
    """``loss_<time>/``: ``epoch_loss.txt``, ``epoch_val_loss.txt``, ``epoch_loss.png``,
    ``epoch_miou.txt``, ``epoch_miou.png`` and TensorBoard: loss, val_loss, lr, miou, each
    class's IoU, and a picture of val predictions at every mIoU.

    The history and what TensorBoard is owed are kept here as epochs end (:meth:`append_loss`,
    :meth:`append_miou`, :meth:`add_samples`); :meth:`writer` hands them to a function that
    writes the files, which the trainer runs in its background writer. Text files are
    rewritten whole from the history, so a resumed run continues them without gaps or repeated
    lines. The curves are redrawn at most every :data:`PLOT_SECONDS`, and by :meth:`close`.
    """

    def __init__(
        self,
        log_dir: str | Path,
        history: dict | None = None,
        class_names: Sequence[str] = (),
    ):
        self.log_dir = Path(log_dir)
        self.history = history or empty_history()
        self.class_names = list(class_names)
        # what the next write owes: TensorBoard events, text files, curves whose data changed
        self._events: list[tuple[str, str, object, int]] = []
        self._texts: dict[str, str] = {}
        self._changed: set[str] = set()
        self.closed = False  # whether the final write (curves, TensorBoard closed) is owed no more
        # the writing side's own state (one write at a time)
        self._tensorboard = None  # a SummaryWriter, made by the first write
        self._undrawn: set[str] = set()
        self._drawn = time.monotonic()  # when the curves were last drawn

    def append_loss(
        self, epoch: int, loss: float, val_loss: float | None, lr: float | None = None
    ) -> None:
        self.history["loss"].append(loss)
        self._scalar("loss", loss, epoch)
        self._text("epoch_loss.txt", self.history["loss"])
        if lr is not None:
            self._scalar("lr", lr, epoch)
        if val_loss is not None:
            self.history["val_loss"].append(val_loss)
            self._scalar("val_loss", val_loss, epoch)
            self._text("epoch_val_loss.txt", self.history["val_loss"])
        self._changed.add("loss")

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
        last = ""
        best_epoch = self.history.get("best_miou_epoch")
        if best is not None and best_epoch is not None:
            best_miou = self.history["miou"][self.history["miou_epochs"].index(best_epoch)]
            last = f"# best_epoch_weights.pth: epoch {best_epoch}, mIoU {best_miou}\n"
        self._text("epoch_miou.txt", self.history["miou"], last)
        self._changed.add("miou")

    def add_samples(self, epoch: int, picture: np.ndarray) -> None:
        """An (H, W, 3) picture of val images, labels and predictions, in TensorBoard."""
        self._events.append(("image", SAMPLES_TAG, picture, epoch))

    def add_text(self, epoch: int, text: str) -> None:
        """A note in TensorBoard's Text tab (the classes never found at an evaluation; nothing
        when ``text`` is empty)."""
        if text:
            self._events.append(("text", WARNINGS_TAG, text, epoch))

    def writer(self, final: bool = False) -> Callable[[], None]:
        """A function that writes what was logged so far (a copy of it: the history may grow
        meanwhile), for a background thread; ``final`` also draws the curves and closes
        TensorBoard."""
        owed = (copy.deepcopy(self.history), self._events, self._texts, self._changed)
        self._events, self._texts, self._changed = [], {}, set()
        self.closed = final
        return lambda: self._write(*owed, final)

    def close(self) -> None:
        """Write everything now, the curves included."""
        self.writer(final=True)()

    def _write(
        self, history: dict, events: list, texts: dict[str, str], changed: set[str], final: bool
    ) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            write_text_durably(self.log_dir / name, text)
        self._tensorboard_events(events, final)
        self._undrawn |= changed
        if final or time.monotonic() - self._drawn >= PLOT_SECONDS:
            self._draw(history)

    def _tensorboard_events(self, events: list, final: bool) -> None:
        if self._tensorboard is None and events:
            tensorboard = optional_import(
                "torch.utils.tensorboard", "tensorboard", "no TensorBoard events are written"
            )
            if tensorboard is not None:
                self._tensorboard = tensorboard.SummaryWriter(str(self.log_dir))
                # the classes' IoU in one chart (the Custom Scalars tab)
                chart = {"IoU of each class": ["Multiline", [f"{IOU_TAG}/.*"]]}
                self._tensorboard.add_custom_scalars({"per-class IoU": chart})
        if self._tensorboard is None:
            return
        for kind, tag, value, step in events:
            if kind == "image":
                self._tensorboard.add_image(tag, value, step, dataformats="HWC")
            elif kind == "text":
                self._tensorboard.add_text(tag, value, step)
            else:
                self._tensorboard.add_scalar(tag, value, step)
        if final:
            self._tensorboard.close()
            self._tensorboard = None
        else:
            self._tensorboard.flush()

    def _draw(self, history: dict) -> None:
        for name, figure in (("loss", self.loss_figure), ("miou", self.miou_figure)):
            if name in self._undrawn and history[name]:
                fig = figure(history)
                if fig is not None:
                    path = self.log_dir / f"epoch_{name}.png"
                    write_durably(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        self._undrawn.clear()
        self._drawn = time.monotonic()

    def miou_figure(self, history: dict | None = None):
        """The mIoU curve (a matplotlib Figure; None without matplotlib)."""
        history = history or self.history
        fig, axes = self._figure()
        if fig is None:
            return None
        axes.plot(
            history["miou_epochs"],
            history["miou"],
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

    def _scalar(self, tag: str, value: float, epoch: int) -> None:
        self._events.append(("scalar", tag, value, epoch))

    def _text(self, name: str, values: list[float], last: str = "") -> None:
        self._texts[name] = "".join(f"{v}\n" for v in values) + last

    @staticmethod
    def _figure():
        figure = optional_import("matplotlib.figure", "matplotlib", "no curves are drawn")
        if figure is None:
            return None, None
        fig = figure.Figure()
        axes = fig.add_subplot()
        axes.grid(True)
        return fig, axes

    def loss_figure(self, history: dict | None = None):
        """The train (and val) loss curves, raw and smoothed (a matplotlib Figure; None without
        matplotlib)."""
        history = history or self.history
        fig, axes = self._figure()
        if fig is None:
            return None
        curves = [("loss", "train loss", "red", "green")]
        if history["val_loss"]:
            curves.append(("val_loss", "val loss", "coral", "#8B4513"))
        for key, label, color, smooth_color in curves:
            values = history[key]
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
        image, label, *_ = dataset[(epoch, index % len(dataset))]  # border maps apart
        image = enlarge(image.permute(1, 2, 0).numpy(), min_side)
        label = enlarge(label.numpy().astype(np.uint8), min_side)
        tiles += [image, np.asarray(overlay(image, label, colors))]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid([tiles[i : i + 4] for i in range(0, len(tiles), 4)])).save(path)
    return path
