"""Mistakes a user can fix: :class:`UserError` (defined in ``nets.errors``, below every package
that raises it), the CLI wrapper that prints it as one line with exit code 2, and the note
printed once when an optional package is missing."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from nets.errors import UserError

__all__ = ["UserError", "exit_on_user_error", "optional_import", "user_message"]

T = TypeVar("T")


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a CLI entry point: a :class:`UserError` becomes one line on stderr and exit code 2."""

    @wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {user_message(error)}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def user_message(error: UserError) -> str:
    """The one-sentence message, also when a DataLoader worker re-raised it with its traceback."""
    message = str(error)
    if "Original Traceback" in message:  # torch's ExceptionWrapper text; the sentence is last
        last = message.strip().splitlines()[-1]
        message = last.split(f"{UserError.__name__}: ", 1)[-1]
    return message


_NOTED: set[str] = set()


def optional_import(module: str, package: str, what: str):
    """``importlib.import_module(module)``, or None with a note, once per process, of what is
    left out without it (the GPU check runs where only torch and a few packages are)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if package not in _NOTED:
            _NOTED.add(package)
            print(f"note: {package} is not installed, so {what} (pip install {package}).")
        return None
