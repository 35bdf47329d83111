"""Weights files and the resumable training checkpoint: what a run saves at each epoch's end
(written in the background by :mod:`utils.training.writer`), and reading them back, checked."""

from __future__ import annotations

import copy
import pickle
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nets.unet import backbone_prefixes, width_mult_of
from utils.errors import UserError
from utils.seeding import capture_rng, restore_rng
from utils.settings.config import FIXED_ON_RESUME, SETTINGS, TrainConfig, format_value
from utils.settings.model import (
    ModelSettings,
    saved_checksum,
    settings_path,
    write_settings_file,
    wrong_width,
)
from utils.training.writer import HostSnapshot, atomic_save, replace_with_link

#: What ``checkpoint_last.pth`` holds: written by :meth:`CheckpointSaver.save`, read back by
#: :func:`load_training_checkpoint` (and ``config`` by train.py, under the flags it is given).
#: Checkpoints also carry ``checksum`` (those saved before it still load).
CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "epoch", "history", "log_dir", "rng", "config")
CHECKSUM_KEY = "checksum"


def _tensors(value: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{path}/{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{path}/{index}")


def tensors_checksum(value: Any) -> str:
    """A CRC-32 of every tensor of a nested structure with its place in it, in order, over its
    bytes as they lie in memory (a saved file keeps its tensors' layout): what a saved file
    carries, so that damaged bytes are named when it is loaded instead of turning into a NaN
    epochs later."""
    crc = 0
    for path, tensor in _tensors(value):
        crc = zlib.crc32(path.encode(), crc)
        crc = zlib.crc32(_memory(tensor).numpy(), crc)
    return f"crc32:{crc:08x}"


def _memory(tensor: torch.Tensor) -> torch.Tensor:
    """The bytes of a tensor in its own memory order (no copy for the usual dense layouts)."""
    tensor = tensor.detach().cpu()
    dense = tensor.is_contiguous() or tensor.is_contiguous(memory_format=torch.channels_last)
    tensor = tensor if dense else tensor.contiguous()
    return tensor.as_strided((tensor.numel(),), (1,)).view(torch.uint8)


def load_torch_file(path: Path, flag: str):
    """``torch.load`` (tensors only, onto the CPU), or one sentence saying why it cannot."""
    if path.stat().st_size == 0:
        raise UserError(
            f"{flag} '{path}' is empty (0 bytes), as an interrupted copy or save leaves a file; "
            "copy or save it again."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = next((x for x in str(error).splitlines() if "Unsupported global" in x), None)
        if found:
            reason = f"it holds Python objects besides tensors ({found.strip().rstrip('.')})"
            fix = "save model.state_dict() instead"
        else:
            reason = "torch.load cannot unpickle it"
            fix = f"point {flag} at a .pth file saved by train.py or by the original code"
        message = f"{flag} '{path}' is not a PyTorch weights file ({reason}); {fix}."
        raise UserError(message) from None
    except Exception as error:
        lines = str(error).strip().splitlines()
        reason = lines[0].rstrip(".") if lines else type(error).__name__
        raise UserError(
            f"{flag} '{path}' cannot be read ({reason}); it may be incomplete or damaged: copy "
            "or save it again."
        ) from None


def checkpoint_checksums(state: dict, known: dict[str, str] | None = None) -> dict[str, str]:
    """:func:`tensors_checksum` of each part of a checkpoint that holds tensors (``model`` is
    the weights file's own); ``known`` parts are taken as given."""
    known = known or {}
    return {
        key: known.get(key) or tensors_checksum(value)
        for key, value in state.items()
        if key != CHECKSUM_KEY and next(_tensors(value), None) is not None
    }


def check_checkpoint(state: dict, path: Path, flag: str) -> None:
    """A checkpoint whose tensors differ from the checksums saved in it is damaged."""
    expected = state.get(CHECKSUM_KEY)
    if expected is None:  # saved before checksums
        return
    found = checkpoint_checksums(state)
    damaged = [key for key in expected if found.get(key) != expected[key]]
    if damaged:
        raise UserError(
            f"{flag} '{path}' is damaged: its {' and '.join(damaged)} tensors do not match the "
            "checksums saved in it; use another copy of it, or start a new run from the weights "
            "beside it (last_epoch_weights.pth) with --model-path."
        )


def check_weights_file(state: dict, path: Path, flag: str) -> None:
    """Weights whose tensors differ from the checksum in the settings file beside them are
    damaged (or were rewritten by code that did not update it)."""
    expected = saved_checksum(path)
    if expected is None:  # the original's files, or saved before checksums
        return
    found = tensors_checksum(state)
    if found != expected:
        beside = settings_path(path)
        raise UserError(
            f"{flag} '{path}' is damaged: its tensors do not match the checksum in '{beside}' "
            f"({found}, not {expected}); copy both files again, or, if other code rewrote the "
            f"weights on purpose, delete '{beside}'."
        )


def read_state_dict(
    path: str | Path, missing: str = "put the weights file there or point --model-path at one"
) -> dict[str, torch.Tensor]:
    """A model state dict from a weights file, a training checkpoint or a DataParallel save;
    ``missing`` says what to do when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--model-path '{path}' does not exist; {missing}.")
    state = load_torch_file(path, "--model-path")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        check_checkpoint(state, path, "--model-path")
        state = state["model"]  # our checkpoint_last.pth
    elif isinstance(state, dict):
        check_weights_file(state, path, "--model-path")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(
            f"--model-path '{path}' does not hold a state dict of tensors; save model.state_dict()."
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def _group(key: str) -> str:
    if key.startswith(tuple(backbone_prefixes().values())):
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
    state = read_state_dict(
        path,
        "put the weights file there, point --model-path at one, or give '' to start "
        "without weights",
    )
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
        held, width_mult = backbone_of(state), width_mult_of(state)
        if held == model.backbone and width_mult not in (None, model.width_mult):
            raise wrong_width(path, width_mult, model.width_mult)
        other = f"it holds {held} weights: --backbone {held}?" if held else "another --backbone?"
        raise UserError(
            f"{missing_backbone} of {report.total['backbone']} backbone tensors in {path} do not "
            f"fit this model ({other}); pass the weights of this backbone, or "
            "--allow-backbone-mismatch to train with what does fit."
        )
    model.load_state_dict(matched, strict=False)
    return report


def backbone_of(state: dict) -> str | None:
    """The backbone whose tensor names a state dict holds (None: neither)."""
    for name, prefix in backbone_prefixes().items():
        if any(key.startswith(prefix) for key in state):
            return name
    return None


class CheckpointSaver:
    """Every file a run saves, decided in one place: ``ep%03d-loss%.3f[-val_loss%.3f].pth`` every
    ``save_period`` epochs and at the last (none for 0), ``best_epoch_weights.pth``,
    ``last_epoch_weights.pth`` (each a plain state dict with its settings beside it; one file
    per epoch, the others links to it) and ``checkpoint_last.pth``, everything a run needs to
    continue. Only rank 0 saves.

    :meth:`save` copies the epoch's tensors into host buffers (reused from epoch to epoch) and
    returns the job that writes the files from that copy, which the trainer hands to its
    background writer.
    """

    def __init__(self, config: TrainConfig):
        self.save_dir = Path(config.output.save_dir)
        self.save_period = config.output.save_period
        self.total_epochs = config.schedule.unfreeze_epoch
        self.best_by = config.evaluation.save_best_by
        self.settings = ModelSettings(**config.model_settings())
        self.config = config.flat()
        # used in turn: an epoch's copy is taken while the writer may still be writing the
        # one before
        self.snapshots = (HostSnapshot(), HostSnapshot())

    def is_best(
        self, history: dict, *, loss: float, val_loss: float | None, miou: float | None
    ) -> bool:
        """Whether this epoch beats the ``history`` of those before it: the highest mIoU (epochs
        without one do not count), or the original's lowest val loss (train loss without a val
        split)."""
        if self.best_by == "miou":
            return miou is not None and all(miou >= m for m in history["miou"])
        previous = history["val_loss" if val_loss is not None else "loss"]
        current = val_loss if val_loss is not None else loss
        return not previous or current <= min(previous)

    def save(
        self,
        epoch: int,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        history: dict,
        log_dir: str | Path,
        loss: float,
        val_loss: float | None,
        best: bool,
    ) -> Callable[[], None]:
        """After ``epoch`` (1-based) epochs: the snapshot of the weights and the optimizer (the
        only wait), and the job that writes the weights once, as ``last_epoch_weights.pth``,
        links the best and periodic names to it when they are due, then writes the checkpoint,
        which holds those same tensors."""
        snapshot = self.snapshots[epoch % len(self.snapshots)]
        tensors = snapshot.take({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
        checkpoint = {
            **tensors,
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "history": copy.deepcopy(history),
            "log_dir": str(log_dir),
            "rng": capture_rng(next(model.parameters()).device),
            "config": self.config,
            "total_epochs": self.total_epochs,  # as --time-budget fitted them
        }
        names = []
        if self.save_period and (epoch % self.save_period == 0 or epoch == self.total_epochs):
            name = f"ep{epoch:03d}-loss{loss:.3f}"
            names.append(
                name + (f"-val_loss{val_loss:.3f}.pth" if val_loss is not None else ".pth")
            )
        if best:
            rule = self.best_by if self.best_by == "miou" or val_loss is not None else "train loss"
            print(f"Save best model to best_epoch_weights.pth (by {rule})")
            names.append("best_epoch_weights.pth")
        return lambda: self.write(checkpoint, names, snapshot)

    def write(self, checkpoint: dict, names: list[str], snapshot: HostSnapshot) -> None:
        """Write what :meth:`save` took into ``snapshot`` (in the writer's thread)."""
        snapshot.wait()
        weights = checkpoint["model"]
        last = self.save_dir / "last_epoch_weights.pth"
        atomic_save(weights, last)
        checksum = tensors_checksum(weights)
        write_settings_file(last, self.settings, checksum)
        for name in names:
            replace_with_link(last, self.save_dir / name)
            replace_with_link(settings_path(last), settings_path(self.save_dir / name))
        checkpoint[CHECKSUM_KEY] = checkpoint_checksums(checkpoint, {"model": checksum})
        atomic_save(checkpoint, self.save_dir / "checkpoint_last.pth")


def read_training_checkpoint(path: str | Path) -> dict:
    """The checkpoint at ``path`` (for ``--resume``), or a sentence saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--resume '{path}' does not exist; point it at <save-dir>/checkpoint_last.pth."
        )
    state = load_torch_file(path, "--resume")
    if isinstance(state, dict):
        check_checkpoint(state, path, "--resume")
    if isinstance(state, dict) and "args" in state and "config" not in state:
        # written before recipe files: the settings were the flags' namespace
        state["config"] = {k: v for k, v in state.pop("args").items() if k in SETTINGS}
    if not isinstance(state, dict) or not set(CHECKPOINT_KEYS) <= set(state):
        raise UserError(
            f"--resume '{path}' is a weights file, not a training checkpoint; resume from "
            "checkpoint_last.pth, or start a new run with --model-path."
        )
    return state


def check_fixed_on_resume(saved: dict[str, Any], changed: dict[str, Any]) -> None:
    """A resumed run keeps the model's shape: ``changed`` (flags and files) may not differ from
    the checkpoint's ``saved`` settings in :data:`FIXED_ON_RESUME`."""
    for key in FIXED_ON_RESUME:
        if key in changed and key in saved and changed[key] != saved[key]:
            info = SETTINGS[key]
            raise UserError(
                f"{info.describe()} {format_value(changed[key])} differs from the checkpoint's "
                f"{format_value(saved[key])}; a resumed run keeps the model's shape (start a new "
                "run with --model-path to change it)."
            )


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run continues: epochs done, the logged history, its log folder, and
    what changed on the way in (to tell the user)."""

    epoch: int
    history: dict
    log_dir: Path
    notes: tuple[str, ...] = ()
    total_epochs: int | None = None  # the run's count when saved (older checkpoints: none)


#: Optimizer options that describe the implementation (fused kernels...), not the training:
#: they follow the device a run resumes on, not the one it was saved on.
IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load ``saved`` into ``optimizer`` as it was built here: with its own implementation
    flags (``optimizer.load_state_dict`` would copy the saved ``fused``, and place the step
    counters by it), and every per-parameter state in its parameter's device, dtype and memory
    layout, so a resume on another device or with another --channels-last works."""
    groups = [
        {**group, **{k: ours[k] for k in IMPLEMENTATION_FLAGS if k in ours}}
        for group, ours in zip(saved["param_groups"], optimizer.param_groups, strict=False)
    ]
    optimizer.load_state_dict({**saved, "param_groups": groups})
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[key] = torch.empty_like(param).copy_(value)


def load_scaler_state(scaler: torch.amp.GradScaler, saved: dict) -> str | None:
    """Restore the GradScaler, or start a fresh one (and say so) when the run was not fp16
    before; a scaler that is off (bf16, fp32) ignores a saved fp16 state."""
    if scaler.is_enabled() and not saved:
        return (
            "the checkpoint was trained without fp16, so its GradScaler starts fresh at "
            f"scale {scaler.get_scale():g}"
        )
    scaler.load_state_dict(saved)
    return None


def load_training_checkpoint(
    checkpoint: dict,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
) -> Resumed:
    """Restore what :meth:`CheckpointSaver.save` wrote (its ``config`` is read earlier), onto
    this run's device, layout and precision. ``checkpoint`` is emptied once loaded, so its
    tensors (the weights and the optimizer's state, three times the weights with Adam) leave
    host memory on every rank before training starts."""
    model.load_state_dict(checkpoint["model"])
    load_optimizer_state(optimizer, checkpoint["optimizer"])
    note = load_scaler_state(scaler, checkpoint["scaler"])
    restore_rng(checkpoint["rng"], device)
    resumed = Resumed(
        checkpoint["epoch"],
        checkpoint["history"],
        Path(checkpoint["log_dir"]),
        notes=(note,) if note else (),
        total_epochs=checkpoint.get("total_epochs"),
    )
    checkpoint.clear()
    return resumed
