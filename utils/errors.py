"""The one exception type for mistakes a user can fix (bad data, flags or files)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

T = TypeVar("T")


class UserError(ValueError):
    """A problem the user caused and can fix; the message is one sentence saying how.

    It subclasses ``ValueError`` so library callers that already catch that keep working.
    CLIs print it without a traceback and exit with code 2 (see :func:`exit_on_user_error`).
    """


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
