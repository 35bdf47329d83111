"""Progress bars for a terminal, whole lines for a log file.

On a terminal, :func:`progress` is tqdm. When stderr is not a terminal (``nohup``,
``make demo > log``, CI), tqdm would write a redraw with a carriage return at every update;
:class:`LineProgress` writes instead a whole line at most every :data:`LINE_SECONDS` and one at
the end, with the same text: ``Epoch 3/12: 24/48 [00:09] f_score=0.81, total_loss=0.52``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

#: Without a terminal, a progress line at most this often (seconds), besides the last one.
LINE_SECONDS = 5.0


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    disable: bool = False,
) -> Any:
    """A tqdm bar on a terminal; a :class:`LineProgress` when stderr is not one."""
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, disable=disable, mininterval=0.3)
    return LineProgress(iterable, total=total, desc=desc, disable=disable)


def say(text: str) -> None:
    """Print a line without breaking a progress bar (tqdm's ``write`` on a terminal)."""
    if sys.stderr.isatty():
        tqdm.write(text)
    else:
        print(text, flush=True)


class LineProgress:
    """The part of tqdm's interface the scripts use, written as whole lines to stderr."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        disable: bool = False,
    ):
        self.iterable = iterable
        self.total = total if total is not None else _length(iterable)
        self.desc = desc
        self.disable = disable
        self.n = 0
        self.postfix: dict[str, str] = {}
        self.start = self.last = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        last = self.total is not None and self.n >= self.total  # close() writes that line
        if not last and time.monotonic() - self.last >= LINE_SECONDS:
            self._line()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = {key: str(value) for key, value in sorted(values.items())}

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        if self.disable:
            return
        seconds = int(self.last - self.start)
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        text = f"{self.desc}: {count} [{seconds // 60:02d}:{seconds % 60:02d}]"
        if self.postfix:
            text += " " + ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        print(text, file=sys.stderr, flush=True)


def _length(iterable: Iterable | None) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
