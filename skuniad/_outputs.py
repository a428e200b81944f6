"""Writing result files safely: one writer per folder, no planted links, spreadsheet-safe cells.

- :func:`folder_lock`: an exclusive, advisory lock on an output folder, so
  that two runs writing into one folder do not interleave their files; the
  second is refused at once. The operating system drops the lock when the
  process ends, however it ends.
- :func:`open_output`: a result file is created as a new file; a symbolic link
  found at its path (planted by someone who can write into the folder) is
  replaced, never written through.
- :func:`spreadsheet_safe`: a text cell that a spreadsheet would run as a
  formula gets a leading ``'``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from skuniad.errors import SkuniadError

LOCK_NAME = ".skuniad.lock"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What a spreadsheet cell starts with when Excel, LibreOffice or Sheets would evaluate it."""


class OutputFolderBusy(SkuniadError, OSError):
    """Another process is writing into the output folder."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (which must exist) for the block.

    Raises :class:`OutputFolderBusy` when another process holds it.
    """
    path = Path(folder) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            _lock(fd)
        except OSError:
            raise OutputFolderBusy(
                f"another skuniad run is writing into {folder} (it holds {path}); wait for it "
                "to finish or choose another output folder"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def open_output(path: str | os.PathLike, mode: str = "w", **kwargs) -> IO:
    """``open(path, mode)`` for a result file, which never writes through a symlink.

    ``mode`` is ``"w"`` or ``"wb"`` (plus ``open``'s ``newline=``,
    ``encoding=``...). A link at ``path`` is removed first; one planted again
    in between makes the open fail rather than follow it.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags | getattr(os, "O_BINARY", 0), 0o666)
    return os.fdopen(fd, mode, **kwargs)


def spreadsheet_safe(cell: str) -> str:
    """``cell`` with a leading ``'`` if a spreadsheet would evaluate it as a formula.

    For text cells (paths, names, messages), never for numbers: ``-1.5`` is a
    number to a spreadsheet too.
    """
    return f"'{cell}" if cell.startswith(FORMULA_STARTS) else cell
