"""User-facing errors: the CLI prints these as one line (no traceback)."""

from pathlib import Path


class CaptionerError(Exception):
    """A problem with the user's input (a file, a config, a flag) that we can explain in one line."""


def file_error(path: str | Path, problem: str) -> CaptionerError:
    """Build the standard one-line error: ``<path>: <problem>``."""
    return CaptionerError(f"{path}: {problem}")
