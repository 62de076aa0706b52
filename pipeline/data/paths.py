"""One guard for every path a user hands us: a regular file (never a FIFO, device or socket), optionally
confined to a root folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pipeline.errors import InputError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def regular_file(path: str | Path, what: str = "input file") -> Path:
    """``path``, once ``os.stat`` says it is a regular file; never opens it (opening a FIFO blocks).

    A symlink is followed (its target must be a regular file).

    Raises:
        InputError: ``"{what} not found: {path}"``, or ``"{what} {path} is not a regular file: it is a FIFO
            (named pipe)"`` (and the like for directories, sockets and devices).
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(f"{what} not found: {p}") from None
    except (OSError, ValueError) as e:  # a symlink loop, a name too long, a NUL byte
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise InputError(f"cannot open {what} {p}: {reason}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a plain file")
        raise InputError(f"{what} {p} is not a regular file: it is {kind}")
    return p


def confined_file(path: str | Path, root: str | Path, what: str = "file") -> Path:
    """``path`` (relative paths are taken under ``root``), once it resolves to a regular file inside ``root``.

    A path that does not exist and one outside ``root`` get the same message, so an answer never tells
    which paths exist outside the root.

    Raises:
        InputError: ``"{what} {path!r} is not a readable file under the allowed root"``.
    """
    base = Path(root).resolve()
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = base / candidate
    refused = InputError(f"{what} {str(path)!r} is not a readable file under the allowed root")
    try:
        target = candidate.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        raise refused from None
    if not target.is_relative_to(base):
        raise refused
    try:
        return regular_file(target, what)
    except InputError:
        raise refused from None
