"""Files only this machine's owner reads: written atomically, private from their first byte."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Replace a file's contents atomically: a reader sees the old file or the new one, and a write that
    fails (a read-only or full disk) leaves the old one as it was; raise OSError then. The file is
    readable by its owner only (mode 0600) from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            # Renamed only once on disk: a power cut leaves the old file or the new one, never an empty one.
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
