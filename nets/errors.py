"""The one exception type for mistakes a user can fix (bad data, flags or files).

It lives here, at the bottom of the imports, so that the model package raises it without
importing anything from ``utils/``; ``utils.errors`` hands it on with the CLI wrapper that turns
it into one line and exit code 2.
"""


class UserError(ValueError):
    """A problem the user caused and can fix; the message is one sentence saying how.

    It subclasses ``ValueError`` so library callers that already catch that keep working.
    CLIs print it without a traceback and exit with code 2 (see
    :func:`utils.errors.exit_on_user_error`).
    """
