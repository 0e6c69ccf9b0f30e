"""Writing run files so that a reader, or a crash, never sees half of one: the one atomic writer.

Every file of a run directory (Parquet tables, config.yaml, summary.json, checkpoints, trial tables) is
written to a temporary name in the same directory and moved into place with ``os.replace``. Checkpoints
are also made durable (``durable=True``: the file and the directory are fsynced), because a resume must
find the previous checkpoint intact after a power loss, not only after a killed process.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path: Path, write: Callable[[Path], object], durable: bool = False) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (fsynced when ``durable``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as stream:
                os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))
