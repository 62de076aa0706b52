"""pipeline.inbox.manifest: one claim wins among threads and processes; leases, renewal and dead owners."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipeline.inbox.manifest import Claim, Fingerprint, Manifest, Skip, owner_alive, this_owner
from tests.pipeline.inbox.test_inbox import _fake_scorer, _put, _run

ROOT = Path(__file__).resolve().parents[3]

FP = Fingerprint(10, 1, "ab" * 32)


def test_one_claim_wins_among_threads(tmp_path):
    m = Manifest(tmp_path / "m.sqlite3")
    results: list[Claim | Skip] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        results.append(m.claim("x.csv", FP, "table"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, Claim) for r in results) == 1
    assert {r.reason for r in results if isinstance(r, Skip)} == {"claimed"}


# Run by each of two processes: wait for "go", then process the inbox; the fake scorer logs every call.
_WORKER = """
import sys, time
from pathlib import Path
from pipeline.inbox import process as inbox
from pipeline.inbox import discovery as inbox_discovery
from pipeline.inbox.manifest import Manifest
root, n = Path(sys.argv[1]), sys.argv[2]
(root / f"ready-{n}").touch()
while not (root / "go").exists():
    time.sleep(0.01)
m = Manifest(root / "outbox" / "manifest.sqlite3")
def score(path, out_dir):
    with open(root / "scored.log", "a") as f:
        f.write(f"{n} {path.name}\\n")
    time.sleep(0.02)
    report = out_dir / (path.stem + ".anomalies.csv")
    report.write_text(n)
    item = inbox_discovery.Item(path, path.name, "table")
    return {"report": str(report), "input_sha256": inbox_discovery.fingerprint(item).sha256}
for item in inbox_discovery.pending(inbox_discovery.discover(root / "inbox"), m, 1.0):
    inbox.process_item(item, m, score, root / "outbox", root / "outbox" / "quarantine")
"""


def test_two_overlapping_processes_never_score_a_file_twice(box, tmp_path):
    names = [f"f{i:02d}.csv" for i in range(30)]
    for i, name in enumerate(names):
        _put(box["inbox"], name, f"a,b\n{i},{i}\n")  # distinct bytes: no duplicates
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path), str(n)], cwd=ROOT) for n in (1, 2)]
    try:
        deadline = time.time() + 60
        while not all((tmp_path / f"ready-{n}").exists() for n in (1, 2)) and time.time() < deadline:
            time.sleep(0.02)
        (tmp_path / "go").touch()
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
    finally:
        for p in procs:
            p.kill()
    lines = (tmp_path / "scored.log").read_text().split("\n")[:-1]
    scored = [line.split()[1] for line in lines]
    assert sorted(scored) == names  # every file once, none twice
    assert {line.split()[0] for line in lines} == {"1", "2"}  # the runs really overlapped
    entries = Manifest(box["outbox"] / "manifest.sqlite3").entries()
    assert len(entries) == 30 and {e.status for e in entries} == {"done"} and {e.attempts for e in entries} == {1}


_CLAIM_AND_HANG = """
import sys, time
from pathlib import Path
from pipeline.inbox import discovery as inbox_discovery
from pipeline.inbox.manifest import Manifest
inbox_dir, outbox = Path(sys.argv[1]), Path(sys.argv[2])
m = Manifest(outbox / "manifest.sqlite3")
[item] = inbox_discovery.discover(inbox_dir)
m.claim(item.rel, inbox_discovery.fingerprint(item), item.kind)
print("claimed", flush=True)
time.sleep(600)
"""


def test_a_claim_of_a_sigkilled_run_is_taken_over_and_the_file_scored_once(box):
    _put(box["inbox"], "x.csv")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLAIM_AND_HANG, str(box["inbox"]), str(box["outbox"])],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "claimed"
        m = Manifest(box["outbox"] / "manifest.sqlite3")
        calls: list[Path] = []
        [held] = _run(box, m, _fake_scorer(calls))
        assert held.status == "skipped" and held.error.startswith("claimed") and calls == []  # a live claim holds
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        [taken] = _run(box, m, _fake_scorer(calls))
    finally:
        proc.kill()
    assert taken.status == "done" and taken.attempt == 2 and len(calls) == 1
    assert _run(box, m, _fake_scorer(calls)) == [] and len(calls) == 1  # done: never again
    [entry] = m.entries()
    assert entry.status == "done" and entry.attempts == 2 and entry.model_version == "7"


def test_an_expired_lease_is_stale_even_when_its_owner_may_be_alive(tmp_path):
    m = Manifest(tmp_path / "m.sqlite3", lease_s=30)
    first = m.claim("x.csv", FP, "table", now=1000.0)
    assert isinstance(first, Claim)
    # a claim from another host cannot be checked for liveness: only its lease decides
    with m._transaction() as db:
        db.execute("UPDATE files SET owner = 'elsewhere:1:1:abcd'")
    assert m.claim("x.csv", FP, "table", now=1029.0) == Skip("x.csv", "claimed", "elsewhere:1:1:abcd")
    again = m.claim("x.csv", FP, "table", now=1031.0)
    assert isinstance(again, Claim) and again.attempt == 2


def test_a_held_claim_is_renewed_and_a_lost_claim_cannot_finish(tmp_path):
    m = Manifest(tmp_path / "m.sqlite3", lease_s=0.3)
    held = m.claim("x.csv", FP, "table")
    with m.hold(held):
        time.sleep(0.7)  # two lease lengths: the holder's thread renewed it
        assert m.claim("x.csv", FP, "table").reason == "claimed"
    time.sleep(0.4)  # no longer renewed: the lease expires and another run takes the file
    taker = m.claim("x.csv", FP, "table")
    assert isinstance(taker, Claim) and taker.attempt == 2
    assert m.finish(held, "done", report="late.csv") is False  # the first holder lost it: its record is ignored
    assert m.finish(taker, "done", report="r.csv") is True
    assert [(e.status, e.report) for e in m.entries()] == [("done", "r.csv")]


def test_owner_liveness_uses_pid_and_process_start_time():
    me = this_owner()
    assert owner_alive(me)
    host, pid, start, token = me.rsplit(":", 3)
    if start:  # Linux: the same PID with another start time is a reused PID, not our process
        assert not owner_alive(f"{host}:{pid}:{int(start) + 1}:{token}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not owner_alive(f"{host}:{dead.pid}::x")
    assert owner_alive(f"another-host:{dead.pid}::x")  # decided by the lease, not here
