"""The inbox manifest: which file was scored, when, by which model, into which report.

One SQLite table, one row per (inbox-relative path, sha256) pair. Each row moves through

    claimed -> done | failed -> (claimed again after a backoff) ... -> quarantined
            -> changed (the file changed while it was scored) | duplicate (same bytes as a scored file)

Exactly once, with overlapping runs: a run *claims* a file in one ``BEGIN IMMEDIATE`` transaction
(SQLite takes the database's write lock first, so two claims of one file are serialised and the second
sees the first's row). A claim holds a lease (``lease_until``) that its holder renews while it scores
(:meth:`Manifest.hold`). A claim is *stale*, and another run may take it, when its lease has expired or
when its owner ran on this host and that process is gone (PID and process start time, so a reused PID
does not keep a dead claim alive). A run killed mid-way (SIGKILL) therefore blocks nothing: the next run
reclaims the file, counts the attempt, and scores it again; reports are written atomically, so the
report path only ever holds a complete report.

Keep the manifest on a local disk: SQLite's locks are unreliable on some network filesystems.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Statuses after which a (path, sha256) pair is never claimed again.
TERMINAL = ("done", "duplicate", "quarantined", "changed")
CLAIMED, FAILED = "claimed", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT NOT NULL,            -- path relative to the inbox, POSIX separators
    sha256 TEXT NOT NULL,          -- of the bytes that were claimed
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,          -- claimed | done | failed | quarantined | duplicate | changed
    attempts INTEGER NOT NULL,     -- claims so far, including ones whose run was killed
    owner TEXT,                    -- host:pid:process-start:token of the current or last claim
    lease_until REAL,              -- claimed: the claim is stale after this (unix seconds)
    next_attempt REAL,             -- failed: not retried before this
    model_uri TEXT,
    model_version TEXT,
    report TEXT,                   -- report path (claimed: the planned one; duplicate: the original's)
    error TEXT,                    -- the last failure, or why it was quarantined
    run_id TEXT,                   -- the orchestrator's run that claimed it last (e.g. a Prefect flow run)
    first_seen REAL NOT NULL,
    claimed_at REAL,
    finished_at REAL,
    PRIMARY KEY (path, sha256)
);
CREATE INDEX IF NOT EXISTS files_sha256 ON files (sha256);
CREATE INDEX IF NOT EXISTS files_stat ON files (path, size, mtime_ns);
CREATE INDEX IF NOT EXISTS files_report ON files (report);
"""


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a file's content: its size, modification time and sha256."""

    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class Claim:
    """The right to score one file; held until :meth:`Manifest.finish` or :meth:`Manifest.fail`."""

    path: str
    fingerprint: Fingerprint
    kind: str
    attempt: int
    owner: str
    report: str | None
    clash: str | None = None  # another inbox path whose report is the same file: this one must not write it


@dataclass(frozen=True)
class Entry:
    """One row of the manifest."""

    path: str
    sha256: str
    size: int
    mtime_ns: int
    kind: str
    status: str
    attempts: int
    owner: str | None
    lease_until: float | None
    next_attempt: float | None
    model_uri: str | None
    model_version: str | None
    report: str | None
    error: str | None
    run_id: str | None
    first_seen: float
    claimed_at: float | None
    finished_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Skip:
    """Why a file was not claimed: ``reason`` is a status (``done``, ``claimed``, ``failed``, ``duplicate``)."""

    path: str
    reason: str
    detail: str = ""


def process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or '' where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the parenthesised command name


def this_owner() -> str:
    """``host:pid:start:token`` naming this process (and a claim of it)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start(pid)}:{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str) -> bool:
    """Whether the process named by ``owner`` may still run; False only when it is known to be gone.

    An owner on another host is assumed alive (its lease decides). On this host the PID must exist and,
    where the start time is known, have the same start time (PIDs are reused).
    """
    try:
        host, pid_text, start, _ = owner.rsplit(":", 3)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # it exists, owned by another user
    return not start or process_start(pid) in ("", start)


class Manifest:
    """The manifest in SQLite file ``path`` (created on first use).

    Args:
        lease_s: a claim is stale this long after its last renewal.
        max_attempts: claims of one file before it is quarantined.
        backoff_s: wait before the second attempt; it doubles after each failure.
    """

    def __init__(self, path: str | Path, lease_s: float = 600.0, max_attempts: int = 3, backoff_s: float = 60.0):
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}")
        if backoff_s < 0:
            raise ValueError(f"backoff_s must be >= 0, got {backoff_s!r}")
        self.path = Path(path)
        self.lease_s, self.max_attempts, self.backoff_s = lease_s, max_attempts, backoff_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=60.0)) as db:
            db.executescript(_SCHEMA)  # idempotent; runs in its own transaction

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection inside ``BEGIN IMMEDIATE``: committed on success, rolled back on error."""
        with closing(sqlite3.connect(self.path, timeout=60.0, isolation_level=None)) as db:
            db.row_factory = sqlite3.Row
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def finished(self) -> set[tuple[str, int, int]]:
        """(path, size, mtime_ns) of every row with a final status: such a file need not be hashed again."""
        with closing(sqlite3.connect(self.path, timeout=60.0)) as db:
            rows = db.execute(f"SELECT path, size, mtime_ns FROM files WHERE status IN {TERMINAL}").fetchall()
        return {(r[0], r[1], r[2]) for r in rows}

    def claim(
        self,
        path: str,
        fp: Fingerprint,
        kind: str,
        report: str | None = None,
        run_id: str | None = None,
        now: float | None = None,
    ) -> Claim | Skip:
        """Claim ``path`` with content ``fp`` for this process, or say why not.

        Args:
            report: the report path this file will write; when another inbox path already owns it, the
                claim names that path in ``clash`` (the caller must not write the report).

        Returns a :class:`Skip` when the file reached a final status, is held by a live claim, waits for
        its next attempt, or has the same bytes as a file already scored (recorded as ``duplicate``).
        """
        now = time.time() if now is None else now
        owner = this_owner()
        with self._transaction() as db:
            row = db.execute("SELECT * FROM files WHERE path = ? AND sha256 = ?", (path, fp.sha256)).fetchone()
            if row is not None:
                if row["status"] in TERMINAL:
                    return Skip(path, row["status"], row["report"] or "")
                if row["status"] == CLAIMED and row["lease_until"] > now and owner_alive(row["owner"]):
                    return Skip(path, CLAIMED, row["owner"])
                if row["status"] == FAILED and row["next_attempt"] > now:
                    return Skip(path, FAILED, f"next attempt in {row['next_attempt'] - now:.0f} s")
            elif (
                first := db.execute(
                    "SELECT path, report FROM files WHERE sha256 = ? AND status = 'done' ORDER BY finished_at LIMIT 1",
                    (fp.sha256,),
                ).fetchone()
            ) is not None:
                db.execute(
                    "INSERT INTO files (path, sha256, size, mtime_ns, kind, status, attempts, report, "
                    "error, run_id, first_seen, finished_at) VALUES (?, ?, ?, ?, ?, 'duplicate', 0, ?, ?, "
                    "?, ?, ?)",
                    (
                        path,
                        fp.sha256,
                        fp.size,
                        fp.mtime_ns,
                        kind,
                        first["report"],
                        f"same bytes as {first['path']}",
                        run_id,
                        now,
                        now,
                    ),
                )
                return Skip(path, "duplicate", first["report"] or "")
            clash = None
            if report is not None:
                clash = db.execute(
                    "SELECT path FROM files WHERE report = ? AND path != ? AND status IN "
                    "('done', 'claimed', 'failed') LIMIT 1",
                    (report, path),
                ).fetchone()
            attempt = (row["attempts"] if row is not None else 0) + 1
            if row is None:
                db.execute(
                    "INSERT INTO files (path, sha256, size, mtime_ns, kind, status, attempts, owner, "
                    "lease_until, report, run_id, first_seen, claimed_at) "
                    "VALUES (?, ?, ?, ?, ?, 'claimed', 1, ?, ?, ?, ?, ?, ?)",
                    (path, fp.sha256, fp.size, fp.mtime_ns, kind, owner, now + self.lease_s, report, run_id, now, now),
                )
            else:
                db.execute(
                    "UPDATE files SET status = 'claimed', attempts = ?, owner = ?, lease_until = ?, "
                    "report = ?, run_id = ?, claimed_at = ?, size = ?, mtime_ns = ? "
                    "WHERE path = ? AND sha256 = ?",
                    (attempt, owner, now + self.lease_s, report, run_id, now, fp.size, fp.mtime_ns, path, fp.sha256),
                )
        return Claim(path, fp, kind, attempt, owner, report, clash["path"] if clash is not None else None)

    def renew(self, claim: Claim) -> bool:
        """Extend ``claim``'s lease; False when it is no longer held (another run took it over)."""
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE files SET lease_until = ? WHERE path = ? AND sha256 = ? AND owner = ? AND status = 'claimed'",
                (time.time() + self.lease_s, claim.path, claim.fingerprint.sha256, claim.owner),
            )
            return cur.rowcount == 1

    @contextmanager
    def hold(self, claim: Claim) -> Iterator[None]:
        """Renew ``claim``'s lease in a background thread while the block runs (a long file keeps it)."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease_s / 3):
                if not self.renew(claim):
                    return

        thread = threading.Thread(target=renew, name=f"lease {claim.path}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def finish(
        self,
        claim: Claim,
        status: str,
        report: str | None = None,
        model_uri: str | None = None,
        model_version: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Record the final ``status`` (done, changed, quarantined) of a held claim.

        Returns False (and changes nothing) when the claim is no longer held by its owner.
        """
        if status not in TERMINAL:
            raise ValueError(f"status must be one of {TERMINAL}, got {status!r}")
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE files SET status = ?, report = ?, model_uri = ?, model_version = ?, error = ?, "
                "lease_until = NULL, next_attempt = NULL, finished_at = ? "
                "WHERE path = ? AND sha256 = ? AND owner = ? AND status = 'claimed'",
                (
                    status,
                    report,
                    model_uri,
                    model_version,
                    error,
                    time.time(),
                    claim.path,
                    claim.fingerprint.sha256,
                    claim.owner,
                ),
            )
            return cur.rowcount == 1

    def fail(self, claim: Claim, error: str, now: float | None = None) -> bool:
        """Record a failed attempt of a held claim. Returns True when the attempts are used up.

        Otherwise the file is retried after ``backoff_s * 2 ** (attempt - 1)`` seconds. When they are used
        up the claim stays held: the caller quarantines the file and records that with :meth:`finish`.
        """
        now = time.time() if now is None else now
        exhausted = claim.attempt >= self.max_attempts
        delay = self.backoff_s * 2 ** (claim.attempt - 1)
        status, retry_at = ("claimed", None) if exhausted else ("failed", now + delay)
        with self._transaction() as db:
            db.execute(
                "UPDATE files SET status = ?, error = ?, next_attempt = ? "
                "WHERE path = ? AND sha256 = ? AND owner = ? AND status = 'claimed'",
                (status, error, retry_at, claim.path, claim.fingerprint.sha256, claim.owner),
            )
        return exhausted

    def entries(self, path: str | None = None) -> list[Entry]:
        """All rows (or those of one inbox path), oldest first."""
        with closing(sqlite3.connect(self.path, timeout=60.0)) as db:
            db.row_factory = sqlite3.Row
            where, args = ("WHERE path = ?", (path,)) if path is not None else ("", ())
            rows = db.execute(f"SELECT * FROM files {where} ORDER BY first_seen, path", args).fetchall()
        return [Entry(**dict(r)) for r in rows]
