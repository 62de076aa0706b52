"""Inbox scoring without orchestration: find new files, keep outbox paths safe, score each file once.

An *item* is one unit of work found in the inbox: a file (tables) or, for a kind with ``folder=True``
(image folders), a folder whose files are that kind's. :data:`KINDS` says which suffixes belong to which
kind; a new kind plugs in by adding a :class:`Kind` there and a scorer in the flow.

:func:`process_item` claims an item in the :class:`~pipeline.manifest.Manifest`, scores it with the
caller's scorer into the outbox (mirroring the item's folder in the inbox), checks that the file did not
change meanwhile, and records the outcome; a failure is retried by later runs and, after the manifest's
``max_attempts``, the item is moved to the quarantine folder with ``<name>.reason.txt`` beside it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError
from pipeline.io import sha256_file
from pipeline.manifest import Claim, Fingerprint, Manifest, Skip
from pipeline.paths import regular_file
from pipeline.report import REPORT_SUFFIX, report_path, write_text_atomic

if TYPE_CHECKING:  # the scoring stack (torch) is imported only when a table is scored
    from pipeline.detector import VAEAnomalyDetector
    from pipeline.rules import FlagRule

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Outcome:
    """What happened to one item in one run."""

    path: str
    status: str  # done | failed | quarantined | changed | skipped (claimed elsewhere, done...) | duplicate
    report: str | None = None
    error: str | None = None
    attempt: int = 0
    sha256: str | None = None
    summary: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def planned_report(outbox: str | Path, item: Item) -> Path:
    """Where ``item``'s report goes: ``<outbox>/<folder in the inbox>/<stem>.anomalies.csv``."""
    out = out_dir_for(outbox, item.rel)
    return safe_join(out, f"{Path(item.rel).stem}{REPORT_SUFFIX}")


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


def _clean(text: str) -> str:
    """``text`` as valid UTF-8: the undecodable bytes of a file name (surrogate escapes) become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _utf8_named(item: Item) -> Item:
    """``item``, or, when its path is not valid UTF-8, a refused item with a valid UTF-8 ``rel``."""
    rel = _clean(item.rel)
    if rel == item.rel:
        return item
    why = f"its name {os.fsencode(item.rel)!r} is not valid UTF-8: rename it (UTF-8), then put it back"
    return Item(item.path, rel, item.kind, refused=why if item.refused is None else f"{_clean(item.refused)}; {why}")


def _not_regular(path: Path) -> str | None:
    """Why ``path`` (not a regular file, as ``DirEntry.is_file`` said) is refused; None when it vanished."""
    try:
        regular_file(path, "inbox file")
    except InputError as e:
        return None if not os.path.lexists(path) else f"{_clean(str(e))}: the inbox takes regular files only"
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
                yield Item(path, rel, "symlink", refused=_clean(f"{why}: {e.name} -> {os.readlink(path)}"))
                continue
            if not target.is_relative_to(base):
                yield Item(path, rel, "symlink", refused=_clean(f"a symlink to {target}, outside the inbox {base}"))
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


def quarantine(item: Item, quarantine_dir: str | Path, reason: str, sha256: str) -> Path:
    """Move ``item`` to ``<quarantine_dir>/<rel>`` and write ``<that>.reason.txt``; returns the new path.

    A name already taken there gets ``.<sha256[:12]>`` before its suffix. A symlink is moved as the link.
    """
    rel = PurePosixPath(item.rel)
    dest = safe_join(quarantine_dir, item.rel)
    if dest.exists() or dest.is_symlink():
        dest = safe_join(quarantine_dir, str(rel.with_name(f"{rel.stem}.{sha256[:12]}{rel.suffix}")))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(item.path, dest)
    note = (
        f"file: {item.rel}\nsha256: {sha256}\nquarantined: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        f"\nreason: {reason}\n"
    )
    write_text_atomic(note, dest.with_name(dest.name + REASON_SUFFIX))
    return dest


Scorer = Callable[[Path, Path], dict[str, Any]]
"""``scorer(input path, out_dir) -> summary``: writes the report under ``out_dir``; the summary holds at
least ``report`` and ``input_sha256`` (and ``model_uri``, ``model_version``)."""


def score_table(
    det: VAEAnomalyDetector,
    path: Path,
    out_dir: Path,
    model_uri: str = "",
    model_name: str | None = None,
    model_version: str | None = None,
    rule: FlagRule | None = None,
) -> dict[str, Any]:
    """Score one table into ``<out_dir>/<stem>.anomalies.csv`` and ``<stem>.summary.json``; the summary.

    Raises:
        InputError: as :func:`pipeline.scoring.score_file`, or the summary cannot be written.
    """
    from pipeline.scoring import score_file
    from pipeline.summary import write_summary

    s = score_file(det, path, out_dir, model_uri, model_name, model_version, rule=rule)
    target = Path(s.report).with_name(f"{Path(path).stem}.summary.json")
    try:
        write_summary(s, target)
    except OSError as e:
        raise InputError(f"cannot write summary {target}: {e.strerror or e}") from e
    return s.to_dict()


def process_item(
    item: Item,
    manifest: Manifest,
    scorer: Scorer,
    outbox: str | Path,
    quarantine_dir: str | Path,
    run_id: str | None = None,
) -> Outcome:
    """Claim ``item``, score it, record the outcome.

    An item's content is scored once: concurrent runs skip it while claimed, later runs once final; only a
    run that died mid-way (or lost its lease) leaves it to be scored again. Never raises for a problem of
    the item: failures are recorded, retried by later runs, then quarantined.
    """
    try:
        fp = fingerprint(item)
    except (OSError, InputError) as e:  # changed, vanished, or became a FIFO since it was found: look again
        return Outcome(item.rel, "skipped", error=_clean(f"not settled: {e}"))
    try:
        report = str(planned_report(outbox, item)) if item.refused is None else None
    except Refused as e:
        report, item = None, Item(item.path, item.rel, item.kind, refused=str(e))
    claim = manifest.claim(item.rel, fp, item.kind, report=report, run_id=run_id)
    if isinstance(claim, Skip):
        return _skipped(claim, item, fp)
    if item.refused is not None:
        return _quarantine(item, manifest, claim, quarantine_dir, f"refused: {item.refused}")
    if claim.clash is not None:
        return _quarantine(
            item,
            manifest,
            claim,
            quarantine_dir,
            f"refused: its report {report} belongs to {claim.clash}: rename one of the two files",
        )
    if claim.attempt > manifest.max_attempts:  # earlier attempts were killed mid-way (e.g. out of memory)
        return _quarantine(
            item,
            manifest,
            claim,
            quarantine_dir,
            f"{claim.attempt - 1} attempts never finished (the scoring process died)",
        )
    with manifest.hold(claim):
        try:
            summary = scorer(item.path, out_dir_for(outbox, item.rel))
        except Exception as e:
            error = _one_line(e)
            if isinstance(e, Refused) or manifest.fail(claim, error):
                return _quarantine(item, manifest, claim, quarantine_dir, error)
            log.warning("%s: attempt %d failed, will retry: %s", item.rel, claim.attempt, error)
            return Outcome(item.rel, "failed", error=error, attempt=claim.attempt, sha256=fp.sha256)
    return _record(item, manifest, claim, summary)


def _record(item: Item, manifest: Manifest, claim: Claim, summary: dict[str, Any]) -> Outcome:
    """Done, unless the file changed while it was scored: then the report is withdrawn."""
    fp = claim.fingerprint
    try:
        now = stat_of(item)
    except OSError:
        now = (-1, -1)
    if now != (fp.size, fp.mtime_ns) or summary.get("input_sha256", fp.sha256) != fp.sha256:
        error = (
            f"{item.rel} changed while it was scored (sha256 {fp.sha256[:12]} when claimed): report "
            "withdrawn; the new content is scored once it settles"
        )
        for p in (
            Path(summary["report"]),
            Path(summary["report"]).with_name(Path(summary["report"]).name.replace(REPORT_SUFFIX, ".summary.json")),
        ):
            p.unlink(missing_ok=True)
        manifest.finish(claim, "changed", error=error)
        log.warning(error)
        return Outcome(item.rel, "changed", error=error, attempt=claim.attempt, sha256=fp.sha256)
    held = manifest.finish(
        claim,
        "done",
        report=summary["report"],
        model_uri=summary.get("model_uri"),
        model_version=summary.get("model_version"),
    )
    if not held:  # our lease expired and another run took the file over: its record stands
        log.warning("%s: claim lost to another run while scoring; its record stands", item.rel)
    return Outcome(item.rel, "done", report=summary["report"], attempt=claim.attempt, sha256=fp.sha256, summary=summary)


def _quarantine(item: Item, manifest: Manifest, claim: Claim, quarantine_dir: str | Path, reason: str) -> Outcome:
    sha = claim.fingerprint.sha256
    try:
        dest = quarantine(item, quarantine_dir, reason, sha)
        where = f"; moved to {dest}"
    except (OSError, InputError) as e:
        where = f"; could not be moved to quarantine ({_one_line(e)}), left in place and never retried"
    manifest.finish(claim, "quarantined", error=reason + where)
    log.warning("%s: quarantined: %s%s", item.rel, reason, where)
    return Outcome(item.rel, "quarantined", error=reason + where, attempt=claim.attempt, sha256=sha)


def _skipped(skip: Skip, item: Item, fp: Fingerprint) -> Outcome:
    if skip.reason == "duplicate":
        return Outcome(
            item.rel,
            "duplicate",
            report=skip.detail or None,
            sha256=fp.sha256,
            error="same bytes as a file already scored: not scored again",
        )
    return Outcome(item.rel, "skipped", sha256=fp.sha256, error=f"{skip.reason} {skip.detail}".strip())


def _one_line(e: BaseException) -> str:
    """The first line of the error; a bug's (not an InputError) is prefixed with its type."""
    text = str(e).strip()
    first = text.splitlines()[0][:500] if text else ""
    if isinstance(e, InputError) and first:
        return first
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
