"""Writing a file whole: through a temporary file in its folder, renamed over it (the one way kdbench writes the
teacher cache, a finalist's weights and a report's files, so a crash never leaves half a file under its name)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically"]

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the process's umask, for files written through a temporary name


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, then rename it over ``path``; on any failure the temporary
    file is removed and the error raised. A link placed at ``path`` is replaced, never followed. The file gets
    the mode ``open()`` would have given it (``mkstemp`` makes 0600)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
