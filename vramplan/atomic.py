"""Atomic file writes: the text goes to a uniquely named temporary file beside the target, is flushed and
fsynced, and only then renamed into place, so a reader (or a concurrent writer) never sees half a file."""

import os
import tempfile
from pathlib import Path


def fsynced_temp(folder: Path, prefix: str, text: str) -> str:
    """Write `text` to a new temporary file in `folder` (named `prefix`..., removed again if writing fails),
    fsynced; returns its path for the caller to `os.replace` or unlink."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return tmp


def replace_atomically(path: Path, text: str) -> None:
    """Write `text` over `path` through an fsynced temporary file and one rename (the last writer wins)."""
    tmp = fsynced_temp(path.parent, f".{path.name}.", text)
    try:
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
