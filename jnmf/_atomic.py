"""Atomic file writes: a reader sees the old file or the complete new one, never a half-written one.

The data goes to a temporary file in the destination's own folder (so that the final rename stays on one file
system), is flushed and ``fsync``-ed, and then ``os.replace``-d onto the destination, which is atomic on POSIX and
Windows; the folder is ``fsync``-ed too (POSIX), so that the rename itself survives a power cut. On an exception
the temporary file is removed and the destination is untouched. A process killed mid-write (SIGKILL, power loss)
can leave a hidden ``.NAME.*.tmp`` beside the destination, never a truncated destination.

Used by ``jnmf.save`` (``_io``), the CLI's ``run.log``/results and the experiments' result files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _umask() -> int:
    # os.umask can only be read by setting it; restore it at once (single-threaded moment in this process).
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows: folders cannot be opened; NTFS journals the rename itself
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None,
                fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path`` atomically.

    Parameters
    ----------
    path : str or path-like
        The destination. Its folder must exist.
    mode : {"wb", "w"}
        Binary or text.
    encoding : str, optional
        For text mode (default UTF-8).
    fsync : bool
        ``fsync`` the file before the rename and the folder after it (durability, not only atomicity).

    Yields
    ------
    file object
        Write to it; do not close it. If the ``with`` block raises, the temporary file is deleted and ``path``
        keeps its previous content (or stays absent).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 less the umask).
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            fd = -1  # now owned by f
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave the temporary file behind
        if fd != -1:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(folder)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_open``); returns the path."""
    with atomic_open(path, "wb", fsync=fsync) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8", fsync: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (see ``atomic_open``); returns the path."""
    with atomic_open(path, "w", encoding=encoding, fsync=fsync) as f:
        f.write(text)
    return Path(path)
