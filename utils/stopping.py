"""How a training run stops early: Ctrl-C, SIGTERM and SIGHUP all end as Ctrl-C does, with the
writes in flight finished, the line that resumes the run, and the shell's exit code."""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from collections.abc import Iterator
from pathlib import Path


class StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a scheduler, ``docker stop``, a closed terminal), stopping training
    as Ctrl-C does; ``signum`` gives the exit code."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class TrainingInterruptedError(Exception):
    """Ctrl-C (or ``signum``) during training, at 1-based ``epoch``, with the checkpoint to
    resume from."""

    def __init__(self, epoch: int, checkpoint: Path, signum: int = signal.SIGINT):
        super().__init__(epoch, checkpoint)
        self.epoch, self.checkpoint, self.signum = epoch, checkpoint, signum

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal's number (130 for Ctrl-C)."""
        return 128 + self.signum

    def message(self) -> str:
        how = "interrupted" if self.signum == signal.SIGINT else signal.Signals(self.signum).name
        if self.checkpoint.is_file():
            return (
                f"{how} at epoch {self.epoch}; resume with: python train.py --resume "
                f"{shlex.quote(str(self.checkpoint))}"
            )
        return (
            f"{how} at epoch {self.epoch}, before the first checkpoint; start again with the "
            "same command"
        )


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """SIGTERM (a scheduler, ``docker stop``, torchrun stopping its ranks) and SIGHUP (a closed
    terminal) stop training as Ctrl-C does: the writes in flight finish, the resume line is
    printed, the workers end, and the exit code is 128 + the signal's number."""

    def stop(signum, _frame):
        raise StopSignal(signum)

    if threading.current_thread() is not threading.main_thread():  # signals go to the main one
        yield
        return
    previous = {number: signal.signal(number, stop) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
