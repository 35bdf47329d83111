"""``train.py`` with test hooks, for runs in a subprocess (under torchrun, say):

    python tests/train_driver.py TRAIN_ARGS...

- ``POISON_CALL``: poison one training loss, for the NaN and Inf tests: the n-th training loss
  of the run, from 1 (epoch ``e`` (from 0) and step ``s`` (from 1) of ``k`` steps per epoch is
  ``e * k + s``), with ``POISON_VALUE`` (``nan`` or ``inf``) and ``POISON_RANK`` (only that
  torchrun rank; default: every process). Validation losses are not counted.
- ``CHECKSUM_DIR``: when training ends, each process writes the SHA-256 of its model's weights
  to ``<dir>/rank<R>.txt``: under DDP every rank must hold the same weights.
- ``HOLD_WRITE=<epoch>:<marker>``: the background write of that epoch's checkpoint writes its
  temporary file, creates ``<marker>``, then waits (for a kill) instead of renaming it.
"""

import hashlib
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from nets.unet_training import SegmentationLoss  # noqa: E402
from utils.training import checkpoint  # noqa: E402
from utils.training.trainer import Trainer  # noqa: E402
from utils.training.writer import temporary_name  # noqa: E402


def poisoned_forward(call: int, value: str = "nan", rank: int | None = None):
    """A :meth:`SegmentationLoss.forward` whose ``call``-th training loss becomes ``value``."""
    real = SegmentationLoss.forward
    calls = {"train": 0}

    def poisoned(self, outputs, labels, pixel_weights=None):
        loss = real(self, outputs, labels, pixel_weights)
        if not torch.is_grad_enabled():  # the val loss
            return loss
        calls["train"] += 1
        here = rank is None or int(os.environ.get("RANK", "0")) == rank
        return loss * float(value) if here and calls["train"] == call else loss

    return poisoned


def fit_and_write_checksum(folder: Path):
    """A :meth:`Trainer.fit` that then writes this rank's weights' SHA-256 to ``folder``."""
    real = Trainer.fit

    def fit(self):
        real(self)
        digest = hashlib.sha256()
        for name, value in sorted(self.model.state_dict().items()):
            digest.update(name.encode() + value.detach().cpu().contiguous().numpy().tobytes())
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank{self.dist_info.rank}.txt").write_text(digest.hexdigest())

    return fit


def holding_save(epoch: int, marker: Path):
    """An ``atomic_save`` that, for ``epoch``'s checkpoint, writes the temporary file and then
    waits forever, as a write still in flight when the run is killed."""
    real = checkpoint.atomic_save

    def save(obj, path):
        if Path(path).name == "checkpoint_last.pth" and obj.get("epoch") == epoch:
            torch.save(obj, temporary_name(Path(path)))
            marker.write_text("holding")
            time.sleep(3600)
        return real(obj, path)

    return save


if __name__ == "__main__":
    if "HOLD_WRITE" in os.environ:
        epoch, marker = os.environ["HOLD_WRITE"].split(":", 1)
        checkpoint.atomic_save = holding_save(int(epoch), Path(marker))
    if "POISON_CALL" in os.environ:
        rank = os.environ.get("POISON_RANK")
        SegmentationLoss.forward = poisoned_forward(
            int(os.environ["POISON_CALL"]),
            os.environ.get("POISON_VALUE", "nan"),
            int(rank) if rank is not None else None,
        )
    if "CHECKSUM_DIR" in os.environ:
        Trainer.fit = fit_and_write_checksum(Path(os.environ["CHECKSUM_DIR"]))
    train.main(sys.argv[1:])
