"""Finding inbox items: kinds, items and safe outbox paths, discovery, and whether an item has settled."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.data.io import sha256_file
from pipeline.data.paths import regular_file
from pipeline.errors import InputError
from pipeline.inbox.manifest import Fingerprint, Manifest
from pipeline.score.report import report_path

log = logging.getLogger("pipeline.inbox.process")  # the inbox's warnings, whichever module logs them

# Names that writers use while a file is incomplete; never picked up whatever the suffix before them.
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".download", ".swp")
REASON_SUFFIX = ".reason.txt"


@dataclass(frozen=True)
class Kind:
    """A kind of inbox item: files with these suffixes, or (``folder=True``) a folder of such files."""

    name: str
    suffixes: frozenset[str]
    folder: bool = False


KINDS: dict[str, Kind] = {
    "table": Kind("table", frozenset({".csv", ".tsv", ".parquet", ".pq"})),
}


@dataclass(frozen=True)
class Item:
    """One thing to score: ``path`` in the inbox, ``rel`` its POSIX path relative to the inbox (valid UTF-8).

    ``refused`` says why it must never be read: a symlink pointing outside the inbox or that never reaches a
    file (a loop), a FIFO or other file that is not a regular file, a name that is not valid UTF-8.
    """

    path: Path
    rel: str
    kind: str
    refused: str | None = None


class Refused(InputError):
    """An item that is never retried: it cannot be scored safely (path outside the outbox, report clash)."""


def safe_join(root: str | Path, rel: str) -> Path:
    """``root / rel``, refusing any ``rel`` that could land outside ``root``.

    Refused: absolute paths (``/x``, ``\\\\x``, ``C:x``), ``..`` components, empty names, NUL bytes, and a
    path whose existing folders resolve (through symlinks) outside ``root``, or that is itself a symlink.

    Raises:
        Refused: names the path and why.
    """
    if not rel or "\0" in rel:
        raise Refused(f"unsafe path {rel!r}: empty or holds a NUL byte")
    if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise Refused(f"unsafe path {rel!r}: absolute paths are not allowed")
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if any(p == ".." for p in parts):
        raise Refused(f"unsafe path {rel!r}: '..' is not allowed")
    base = Path(root).resolve()
    target = base.joinpath(*parts)
    existing = target
    while not existing.exists() and existing != base:  # the deepest folder that exists decides
        existing = existing.parent
    if not existing.resolve().is_relative_to(base) or target.is_symlink():
        raise Refused(f"unsafe path {rel!r}: it resolves to {target.resolve()}, outside {base}")
    return target


def out_dir_for(outbox: str | Path, rel: str) -> Path:
    """The outbox folder of inbox item ``rel``: its folder in the inbox, mirrored (checked by :func:`safe_join`)."""
    parent = PurePosixPath(rel).parent
    return safe_join(outbox, str(parent)) if str(parent) != "." else Path(outbox).resolve()


def _ignored(name: str) -> bool:
    return name.startswith((".", "~")) or name.lower().endswith(PARTIAL_SUFFIXES) or name.endswith(REASON_SUFFIX)


def discover(
    inbox: str | Path, kinds: list[str] | tuple[str, ...] = ("table",), exclude: tuple[Path, ...] = ()
) -> list[Item]:
    """Every item in ``inbox`` (recursively), sorted by relative path.

    Hidden names (``.x``, ``~x``) and partial-download names (``*.part``, ``*.tmp``...) are skipped, as
    are the folders in ``exclude``. Symlinks are never followed into folders; a symlink (file or folder)
    that resolves outside the inbox, or cannot be resolved (a loop), becomes a *refused* item (quarantined,
    never read), as does a FIFO, socket or device with an item's suffix, and an item whose path is not valid
    UTF-8 (its ``rel`` shows the bad bytes as U+FFFD, so that the manifest and the quarantine can hold it).

    Raises:
        InputError: ``inbox`` is not a folder, or a kind is unknown.
    """
    root = Path(inbox)
    if not root.is_dir():
        raise InputError(f"inbox {root} is not a folder")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise InputError(f"unknown inbox kind(s) {unknown}: expected some of {sorted(KINDS)}")
    base = root.resolve()
    file_kinds = {s: k for k in kinds if not KINDS[k].folder for s in KINDS[k].suffixes}
    folder_kinds = [KINDS[k] for k in kinds if KINDS[k].folder]
    skip = {p.resolve() for p in exclude}
    items = [_utf8_named(i) for i in _walk(base, base, file_kinds, folder_kinds, skip)]
    return sorted(items, key=lambda i: i.rel)


def clean_utf8(text: str) -> str:
    """``text`` as valid UTF-8: the undecodable bytes of a file name (surrogate escapes) become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _utf8_named(item: Item) -> Item:
    """``item``, or, when its path is not valid UTF-8, a refused item with a valid UTF-8 ``rel``."""
    rel = clean_utf8(item.rel)
    if rel == item.rel:
        return item
    why = f"its name {os.fsencode(item.rel)!r} is not valid UTF-8: rename it (UTF-8), then put it back"
    return Item(
        item.path, rel, item.kind, refused=why if item.refused is None else f"{clean_utf8(item.refused)}; {why}"
    )


def _not_regular(path: Path) -> str | None:
    """Why ``path`` (not a regular file, as ``DirEntry.is_file`` said) is refused; None when it vanished."""
    try:
        regular_file(path, "inbox file")
    except InputError as e:
        return None if not os.path.lexists(path) else f"{clean_utf8(str(e))}: the inbox takes regular files only"
    return None


def _walk(
    base: Path, folder: Path, file_kinds: dict[str, str], folder_kinds: list[Kind], skip: set[Path]
) -> Iterator[Item]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        log.warning("cannot list inbox folder %s: %s", folder, e.strerror or e)
        return
    for e in entries:
        path = Path(e.path)
        rel = path.relative_to(base).as_posix()
        if _ignored(e.name):
            continue
        if e.is_symlink():
            try:
                target = path.resolve()
            except (OSError, RuntimeError) as err:  # a symlink loop (RuntimeError before Python 3.13)
                loop = isinstance(err, RuntimeError) or getattr(err, "errno", None) == errno.ELOOP
                why = "a symlink loop" if loop else f"a symlink that cannot be resolved ({err})"
                yield Item(path, rel, "symlink", refused=clean_utf8(f"{why}: {e.name} -> {os.readlink(path)}"))
                continue
            if not target.is_relative_to(base):
                yield Item(path, rel, "symlink", refused=clean_utf8(f"a symlink to {target}, outside the inbox {base}"))
            elif e.is_file() and path.suffix.lower() in file_kinds:
                yield Item(path, rel, file_kinds[path.suffix.lower()])
            continue  # a symlinked folder inside the inbox is reached by its real path
        if e.is_dir():
            if path in skip:
                continue
            kind = next((k for k in folder_kinds if _holds(path, k)), None)
            if kind is not None:
                yield Item(path, rel, kind.name)
            else:
                yield from _walk(base, path, file_kinds, folder_kinds, skip)
        elif path.suffix.lower() in file_kinds:
            kind = file_kinds[path.suffix.lower()]
            if e.is_file():
                yield Item(path, rel, kind)
            elif (why := _not_regular(path)) is not None:  # a FIFO would block its reader: never opened
                yield Item(path, rel, kind, refused=why)


def _holds(folder: Path, kind: Kind) -> bool:
    """Whether ``folder`` directly holds at least one file of ``kind`` (then it is one item)."""
    try:
        return any(f.is_file() and f.suffix.lower() in kind.suffixes and not _ignored(f.name) for f in folder.iterdir())
    except OSError:
        return False


def expand_inputs(inputs: list[Path], out: Path) -> list[tuple[Path, Path]]:
    """(input file, report folder) pairs: a file reports into ``out``; a folder (a partitioned dataset)
    gives each of its tables, reporting into ``out/<folder name>/<the part's folder>``.

    A folder with no tables is kept as it is, so reading it fails with a message that names it.
    """
    pairs = []
    for p in inputs:
        parts = discover(p, ("table",)) if Path(p).is_dir() else []
        if not parts:
            pairs.append((Path(p), Path(out)))
            continue
        root = Path(out) / Path(p).resolve().name
        tables = KINDS["table"].suffixes  # a symlink the user put in their own dataset folder is read too
        pairs += [(item.path, out_dir_for(root, item.rel)) for item in parts if item.path.suffix.lower() in tables]
    _check_one_report_each(pairs)
    return pairs


def _check_one_report_each(pairs: list[tuple[Path, Path]]) -> None:
    """Refuse inputs that would write the same report (one would overwrite the other's rows).

    Raises:
        InputError: names both inputs and the report they share.
    """
    owner: dict[Path, Path] = {}
    for path, out_dir in pairs:
        report = report_path(out_dir, path)
        first = owner.setdefault(report.absolute(), path)
        if first is path:
            continue
        if first.absolute() == path.absolute():
            raise InputError(f"input {path} is given twice: each input is scored once, into one report")
        raise InputError(
            f"inputs {first} and {path} would both write the report {report}: "
            "score them into different --out folders, or rename one"
        )


def stat_of(item: Item) -> tuple[int, int]:
    """(size, newest mtime_ns) of a file item, or of a folder item's files together."""
    if item.refused is not None:
        st = item.path.lstat()
        return st.st_size, st.st_mtime_ns
    if item.path.is_dir():
        stats = [f.stat() for f in sorted(item.path.iterdir()) if f.is_file() and not _ignored(f.name)]
        return sum(s.st_size for s in stats), max([s.st_mtime_ns for s in stats] + [item.path.stat().st_mtime_ns])
    st = item.path.stat()
    return st.st_size, st.st_mtime_ns


def settled(item: Item, min_age_s: float, now: float | None = None) -> bool:
    """Whether ``item`` was last modified at least ``min_age_s`` seconds ago (its writer is done)."""
    now = time.time() if now is None else now
    try:
        _, mtime_ns = stat_of(item)
    except OSError:
        return False  # vanished or unreadable: look again next run
    return now - mtime_ns / 1e9 >= min_age_s


def fingerprint(item: Item) -> Fingerprint:
    """Size, mtime and sha256 of an item (for a folder: of its files' names and bytes, in name order).

    A refused item is never read: a symlink is fingerprinted by its target's name, another item by its path.

    Raises:
        FileChangedError: the item changed while it was hashed.
    """
    before = stat_of(item)
    if item.refused is not None and item.path.is_symlink():
        digest = hashlib.sha256(b"symlink->" + os.fsencode(os.readlink(item.path))).hexdigest()
    elif item.refused is not None:
        digest = hashlib.sha256(b"refused:" + os.fsencode(item.path)).hexdigest()
    elif item.path.is_dir():
        h = hashlib.sha256()
        for f in sorted(item.path.iterdir()):
            if f.is_file() and not _ignored(f.name):
                h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
        digest = h.hexdigest()
    else:
        digest = sha256_file(item.path)
    if stat_of(item) != before:
        raise FileChangedError(f"{item.rel} changed while it was hashed")
    return Fingerprint(before[0], before[1], digest)


class FileChangedError(InputError):
    """The item's size or mtime changed between two looks."""


def pending(items: list[Item], manifest: Manifest, min_age_s: float, now: float | None = None) -> list[Item]:
    """The items worth a claim: settled for ``min_age_s`` and not already final with this size and mtime."""
    finished = manifest.finished()
    out = []
    for item in items:
        if not settled(item, min_age_s, now):
            continue
        try:
            size, mtime_ns = stat_of(item)
        except OSError:
            continue
        if (item.rel, size, mtime_ns) not in finished:
            out.append(item)
    return out
