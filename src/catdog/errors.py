"""The one exception type that the command line turns into a one-line error message, and the
helper that puts a library's exception into such a line."""

from __future__ import annotations

import os
from pathlib import Path


class CatdogError(Exception):
    """A problem with the user's input (paths, data, checkpoints, options), stated plainly.

    The CLI prints ``error: <message>`` and exits with status 2, with no traceback.
    """


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (an error here is one line), cut at ``limit``
    characters, else its type."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def missing_file(path: str | os.PathLike, what: str) -> CatdogError:
    """The error for a file that is not there; a folder in its place is named as such (a user
    who gives the weights folder for a weights file should hear that, not "not found")."""
    if Path(path).is_dir():
        return CatdogError(f"{what} {path} is a folder; give the file itself")
    return CatdogError(f"{what} not found: {path}")
