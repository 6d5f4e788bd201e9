"""Crash-safe file writes, shared by the store (blobs, run.json) and the identity (its info file)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fiun_peer import faults

TMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            view, half = memoryview(data), len(data) // 2
            fh.write(view[:half])
            fh.flush()
            faults.point("mid_write", path.name)  # a crash here leaves half a temp file, never a torn blob
            fh.write(view[half:])
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        faults.point("before_rename", path.name)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # make the rename itself durable
