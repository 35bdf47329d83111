"""The original's path for one epoch's training and validation: they live in
:mod:`utils.training.epochs` (``train_one_epoch`` and ``evaluate_loss``; the original's
``fit_one_epoch`` did both, and saved, in one call)."""

from utils.training.epochs import evaluate_loss, train_one_epoch

__all__ = ["evaluate_loss", "train_one_epoch"]
