"""How a training run stops early: Ctrl-C, SIGTERM and SIGHUP all end as Ctrl-C does, with the
writes in flight finished, the line that resumes the run, and the shell's exit code; and the
signal handlers that this and the background writer install for a while."""

from __future__ import annotations

import _thread
import contextlib
import shlex
import signal
import threading
from collections.abc import Callable, Iterator
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
def signal_handlers(handlers: dict[int, Callable]) -> Iterator[None]:
    """``handlers`` (signal number: function) in place inside, the previous ones back after; in
    the main thread, where Python runs handlers (elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def stop_on_signals(signals=(signal.SIGTERM, signal.SIGHUP)) -> contextlib.AbstractContextManager:
    """SIGTERM (a scheduler, ``docker stop``, torchrun stopping its ranks) and SIGHUP (a closed
    terminal) stop training as Ctrl-C does: the writes in flight finish, the resume line is
    printed, the workers end, and the exit code is 128 + the signal's number."""

    def stop(signum, _frame):
        raise StopSignal(signum)

    return signal_handlers(dict.fromkeys(signals, stop))


@contextlib.contextmanager
def signals_deferred(signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Those of ``signals`` with a Python handler reach it as this ends, not inside (in the main
    thread; elsewhere nothing is deferred). They are handed on as ``_thread.interrupt_main``
    does, without a second real signal: in a process whose main thread ran AMX kernels, a real
    one needs a frame larger than the alternate stack that faulthandler (pytest's) gives that
    thread."""
    caught: list[int] = []
    held = [number for number in signals if callable(signal.getsignal(number))]
    try:
        with signal_handlers(dict.fromkeys(held, lambda signum, _frame: caught.append(signum))):
            yield
    finally:
        for number in dict.fromkeys(caught):
            _thread.interrupt_main(number)
