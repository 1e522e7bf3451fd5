"""The one kind of error a user, not a bug, causes: a bad params value, input file or argument."""
from __future__ import annotations


class InputError(ValueError):
    """A value, file or argument that is not what a stage expects; its message names it.

    The shared stage CLI prints these as one line and exits 2; anything else is a bug and keeps
    its traceback. A ValueError subclass, so callers that catch ValueError still do.
    """


def one_line(err: BaseException) -> str:
    """The error's message on one line (a missing file as `path: reason`)."""
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or err}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())
