"""Where a training run's wall time goes: start-up, the steps, waiting for data, evaluation,
the epochs' ends and the last writes, printed in one line when the run ends."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

#: The parts of a run's wall time, in the order the line gives them.
PARTS = ("start-up", "train steps", "waiting for data", "evaluation", "epoch ends", "final writes")


def seconds_since_process_start() -> float:
    """How long this process has run (Linux: from ``/proc/self/stat``, to 10 ms); 0 where that
    cannot be read."""
    with contextlib.suppress(OSError, ValueError, IndexError, AttributeError):
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        started = int(fields[19]) / ticks  # starttime: seconds after boot
        return max(time.clock_gettime(time.CLOCK_BOOTTIME) - started, 0.0)
    return 0.0


class TimedBatches:
    """An iterable of batches that adds the time spent waiting for each to ``clock``'s
    "waiting for data"; other attributes are the wrapped loader's."""

    def __init__(self, batches: Iterable, clock: TimeSplit):
        self.batches, self.clock = batches, clock

    def __iter__(self) -> Iterator:
        iterator = iter(self.batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self.clock.add("waiting for data", time.perf_counter() - start)
            yield batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.batches, name)


class TimeSplit:
    """The wall time of a run, from the process's start, split into :data:`PARTS`.

    Start-up runs to the first step; the epochs' ends are what the loop spends between the
    steps that is neither evaluation nor waiting for data (saving, the next phase's loaders).
    """

    def __init__(self):
        self.origin = time.perf_counter() - seconds_since_process_start()
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.epochs = 0
        self._loop_start: float | None = None

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] += seconds

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def steps_start(self) -> None:
        """Called as the first step starts: start-up ends."""
        if self._loop_start is None:
            self._loop_start = time.perf_counter()
            self.seconds["start-up"] = self._loop_start - self.origin

    def loop_end(self, epochs: int) -> None:
        """Called when the loop ends after ``epochs`` epochs: the rest of it was epoch ends."""
        self.epochs = epochs
        if self._loop_start is not None:
            loop = time.perf_counter() - self._loop_start
            spent = sum(self.seconds[p] for p in PARTS[1:4])
            self.seconds["epoch ends"] = max(loop - spent, 0.0)

    def elapsed(self) -> float:
        """Seconds since the process started."""
        return time.perf_counter() - self.origin

    def line(self) -> str:
        total = time.perf_counter() - self.origin
        parts = ", ".join(f"{name} {self.seconds[name]:.2f} s" for name in PARTS)
        per_epoch = self.seconds["epoch ends"] / max(self.epochs, 1)
        return (
            f"Time: {total:.1f} s in all: {parts} ({1000 * per_epoch:.0f} ms of epoch ends an "
            "epoch)"
        )
