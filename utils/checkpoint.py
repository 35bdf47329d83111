"""Weights files and the resumable training checkpoint."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nets.unet import BACKBONE_PREFIX
from utils.errors import UserError
from utils.seeding import capture_rng, restore_rng

#: What ``checkpoint_last.pth`` holds: written by :func:`save_training_checkpoint`, read back by
#: :func:`load_training_checkpoint` (and ``args`` by train.py's flag parsing).
CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "epoch", "history", "log_dir", "rng", "args")

BACKBONE_PREFIXES = tuple(BACKBONE_PREFIX.values())


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A model state dict from a weights file, a training checkpoint or a DataParallel save."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--model-path {path} does not exist; put the weights file there or point "
            "--model-path at one (train.py also takes '' to start without weights)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"{path} is not a readable PyTorch weights file ({error}).") from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # our checkpoint_last.pth
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors; save model.state_dict().")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _group(key: str) -> str:
    if key.startswith(BACKBONE_PREFIXES):
        return "backbone"
    return "head" if key.startswith("final.") else "decoder"


@dataclass
class LoadReport:
    """What ``load_matching_weights`` took from a file, grouped as backbone/decoder/head."""

    loaded: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    mismatched: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        loaded = sum(self.loaded.values())
        out = [f"Loaded {loaded} of {sum(self.total.values())} model tensors:"]
        out += [
            f"  {group:<8} {self.loaded[group]}/{self.total[group]}"
            for group in ("backbone", "decoder", "head")
            if self.total[group]
        ]
        out += [f"  not loaded (shape differs): {text}" for text in self.mismatched]
        if self.unexpected:
            out.append(
                f"  ignored {len(self.unexpected)} file keys the model lacks, e.g. "
                f"{self.unexpected[0]}"
            )
        return out


def load_matching_weights(
    model: nn.Module, path: str | Path, allow_backbone_mismatch: bool = False
) -> LoadReport:
    """Copy every tensor whose name and shape match, as the reference does, and report it.

    A head that differs (another ``num_classes``) is normal when fine-tuning. Backbone tensors
    that do not load mean the file belongs to another backbone: an error unless allowed.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    report = LoadReport()
    matched = {}
    for key, value in own.items():
        group = _group(key)
        report.total[group] += 1
        theirs = state.get(key)
        if theirs is not None and theirs.shape == value.shape:
            matched[key] = theirs
            report.loaded[group] += 1
        elif theirs is not None:
            report.mismatched.append(
                f"{key} {tuple(theirs.shape)} in the file, {tuple(value.shape)} in the model"
            )
    report.unexpected = [key for key in state if key not in own]
    missing_backbone = report.total["backbone"] - report.loaded["backbone"]
    if missing_backbone and not allow_backbone_mismatch:
        raise UserError(
            f"{missing_backbone} of {report.total['backbone']} backbone tensors in {path} do not "
            "fit this model (another --backbone?); pass the weights of this backbone, or "
            "--allow-backbone-mismatch to train with what does fit."
        )
    model.load_state_dict(matched, strict=False)
    return report


def save_training_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    epoch: int,
    history: dict,
    log_dir: str | Path,
    args: dict,
) -> None:
    """Write everything a run needs to continue after ``epoch`` epochs, atomically."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "history": history,
        "log_dir": str(log_dir),
        "rng": capture_rng(),
        "args": args,
    }
    atomic_save(state, path)


def read_training_checkpoint(path: str | Path) -> dict:
    """The checkpoint at ``path`` (for ``--resume``), or a sentence saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--resume {path} does not exist; point it at <save-dir>/checkpoint_last.pth."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"--resume {path} cannot be read ({error}).") from error
    if not isinstance(state, dict) or not set(CHECKPOINT_KEYS) <= set(state):
        raise UserError(
            f"--resume {path} is a weights file, not a training checkpoint; resume from "
            "checkpoint_last.pth, or start a new run with --model-path."
        )
    return state


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run continues: epochs done, the logged history and its log folder."""

    epoch: int
    history: dict
    log_dir: Path


def load_training_checkpoint(
    checkpoint: dict,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> Resumed:
    """Restore what :func:`save_training_checkpoint` wrote (its ``args`` are read earlier)."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    restore_rng(checkpoint["rng"])
    return Resumed(checkpoint["epoch"], checkpoint["history"], Path(checkpoint["log_dir"]))
