"""pipeline.inbox: discovery, scoring each file once, duplicates, changed files, quarantine, unsafe paths."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.errors import InputError
from pipeline.inbox import discovery as inbox_discovery
from pipeline.inbox import process as inbox
from pipeline.inbox.manifest import Manifest, this_owner
from tests.pipeline.score.test_bad_inputs import call_within

ROOT = Path(__file__).resolve().parents[3]


def _old(path: Path, age_s: float = 60.0) -> Path:
    """Set ``path``'s mtime ``age_s`` seconds in the past (a settled file)."""
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def _put(folder: Path, rel: str, text: str = "a,b\n1,2\n", age_s: float = 60.0) -> Path:
    p = folder / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return _old(p, age_s)


def _fake_scorer(calls: list[Path] | None = None):
    """A scorer that writes ``<stem>.anomalies.csv`` holding the input's bytes, and records the call."""

    def score(path: Path, out_dir: Path) -> dict:
        out_dir.mkdir(parents=True, exist_ok=True)
        report = out_dir / f"{path.stem}.anomalies.csv"
        report.write_bytes(path.read_bytes())
        if calls is not None:
            calls.append(path)
        from pipeline.data.io import sha256_file

        return {
            "report": str(report),
            "input_sha256": sha256_file(path),
            "model_uri": "models:/m@champion",
            "model_version": "7",
        }

    return score


def _run(box: dict[str, Path], manifest: Manifest, scorer, min_age_s: float = 1.0) -> list[inbox.Outcome]:
    items = inbox_discovery.pending(
        inbox_discovery.discover(box["inbox"], exclude=(box["outbox"],)), manifest, min_age_s
    )
    return [inbox.process_item(i, manifest, scorer, box["outbox"], box["quarantine"]) for i in items]


def test_a_failing_file_is_retried_with_backoff_then_quarantined_with_its_reason(box):
    _put(box["inbox"], "sub/bad.csv")
    m = Manifest(box["outbox"] / "manifest.sqlite3", max_attempts=3, backoff_s=0)
    tries: list[int] = []

    def failing(path: Path, out_dir: Path) -> dict:
        tries.append(1)
        raise InputError(f"{path}: missing column(s) ['b']")

    statuses = [[o.status for o in _run(box, m, failing)] for _ in range(4)]
    assert statuses == [["failed"], ["failed"], ["quarantined"], []] and len(tries) == 3
    moved = box["quarantine"] / "sub" / "bad.csv"
    assert moved.is_file() and not (box["inbox"] / "sub" / "bad.csv").exists()
    reason = moved.with_name("bad.csv.reason.txt").read_text()
    assert "missing column(s) ['b']" in reason and "sha256: " in reason
    [entry] = m.entries()
    assert entry.status == "quarantined" and entry.attempts == 3 and str(moved) in entry.error

    slow = Manifest(box["outbox"] / "slow.sqlite3", backoff_s=60)
    _put(box["inbox"], "later.csv")
    assert [o.status for o in _run(box, slow, failing)] == ["failed"]
    [again] = _run(box, slow, failing)
    assert again.status == "skipped" and "next attempt in" in again.error and len(tries) == 4


def test_a_file_whose_runs_keep_dying_is_quarantined_without_another_try(box):
    _put(box["inbox"], "oom.csv")
    m = Manifest(box["outbox"] / "manifest.sqlite3", max_attempts=2)
    item = inbox_discovery.discover(box["inbox"])[0]
    fp = inbox_discovery.fingerprint(item)
    for _ in range(2):  # two runs claimed it and died (their PID is gone)
        m.claim(item.rel, fp, item.kind)
        with m._transaction() as db:
            db.execute("UPDATE files SET owner = ?", (f"{this_owner().split(':')[0]}:999999999::dead",))
    calls: list[Path] = []
    [o] = _run(box, m, _fake_scorer(calls))
    assert o.status == "quarantined" and "2 attempts never finished" in o.error and calls == []


@pytest.mark.parametrize(
    "rel",
    [
        "../x.csv",
        "a/../../x.csv",
        "/etc/passwd",
        "\\\\server\\share\\x.csv",
        "C:x.csv",
        "",
        "a/\0b.csv",
        "..",
        "a\\..\\..\\x.csv",
    ],
)
def test_safe_join_refuses_paths_that_leave_the_root(rel, tmp_path):
    with pytest.raises(inbox_discovery.Refused, match="unsafe path"):
        inbox_discovery.safe_join(tmp_path, rel)


def test_safe_join_keeps_plain_relative_paths_inside(tmp_path):
    assert inbox_discovery.safe_join(tmp_path, "a/b.anomalies.csv") == tmp_path.resolve() / "a" / "b.anomalies.csv"
    # dots in names are fine
    assert inbox_discovery.safe_join(tmp_path, "..a/b..csv") == tmp_path.resolve() / "..a" / "b..csv"


def test_an_outbox_folder_symlinked_outside_is_never_written(box, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (box["outbox"] / "sub").symlink_to(outside)
    _put(box["inbox"], "sub/x.csv")
    calls: list[Path] = []
    [o] = _run(box, Manifest(box["outbox"] / "manifest.sqlite3"), _fake_scorer(calls))
    assert o.status == "quarantined" and "outside" in o.error and calls == []
    assert list(outside.iterdir()) == []
    assert (box["quarantine"] / "sub" / "x.csv").is_file()


def test_an_inbox_symlink_to_a_file_outside_is_quarantined_unread(box, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("a,b\n1,2\n")
    (box["inbox"] / "evil.csv").symlink_to(secret)
    calls: list[Path] = []
    [o] = _run(box, Manifest(box["outbox"] / "manifest.sqlite3"), _fake_scorer(calls), min_age_s=0)
    assert o.status == "quarantined" and "outside the inbox" in o.error and calls == []
    assert (box["quarantine"] / "evil.csv").is_symlink() and secret.read_text() == "a,b\n1,2\n"
    assert "outside the inbox" in (box["quarantine"] / "evil.csv.reason.txt").read_text()


def test_partial_files_are_not_picked_up(box):
    m = Manifest(box["outbox"] / "manifest.sqlite3")
    fresh = _put(box["inbox"], "fresh.csv", age_s=0)
    for name in (".hidden.csv", "upload.csv.part", "x.csv.tmp", "~lock.csv", "notes.txt"):
        _put(box["inbox"], name)
    assert inbox_discovery.pending(inbox_discovery.discover(box["inbox"]), m, min_age_s=5) == []
    _old(fresh, 10)
    settled = inbox_discovery.pending(inbox_discovery.discover(box["inbox"]), m, min_age_s=5)
    assert [i.rel for i in settled] == ["fresh.csv"]


def test_a_file_changed_while_scored_has_its_report_withdrawn_and_the_new_content_scored(box):
    src = _put(box["inbox"], "grow.csv")
    m = Manifest(box["outbox"] / "manifest.sqlite3")

    def appending(path: Path, out_dir: Path) -> dict:
        summary = _fake_scorer()(path, out_dir)
        for suffix in (".summary.json", ".report.html"):  # what a real scorer writes beside the report
            (out_dir / f"{path.stem}{suffix}").write_text("of the old content")
        with open(path, "a") as f:  # the writer was not done after all
            f.write("3,4\n")
        return summary

    [o] = _run(box, m, appending)
    assert o.status == "changed" and "changed while it was scored" in o.error
    assert sorted(p.name for p in box["outbox"].glob("grow.*")) == []  # report, summary and page withdrawn
    _old(src)
    [again] = _run(box, m, _fake_scorer())
    assert again.status == "done" and (box["outbox"] / "grow.anomalies.csv").read_text().endswith("3,4\n")
    assert [e.status for e in m.entries()] == ["changed", "done"]


def test_same_bytes_under_another_name_are_recorded_as_a_duplicate(box):
    _put(box["inbox"], "a.csv")
    _put(box["inbox"], "resent/a-copy.csv")
    m = Manifest(box["outbox"] / "manifest.sqlite3")
    calls: list[Path] = []
    outcomes = {o.path: o for o in _run(box, m, _fake_scorer(calls))}
    assert outcomes["a.csv"].status == "done" and len(calls) == 1
    assert outcomes["resent/a-copy.csv"].status == "duplicate"
    assert outcomes["resent/a-copy.csv"].report == outcomes["a.csv"].report
    assert _run(box, m, _fake_scorer(calls)) == []


def test_two_files_with_one_report_name_never_overwrite_each_other(box):
    _put(box["inbox"], "a.csv")
    pd.DataFrame({"a": [1.0], "b": [2.0]}).to_parquet(box["inbox"] / "a.parquet")
    _old(box["inbox"] / "a.parquet")
    m = Manifest(box["outbox"] / "manifest.sqlite3")
    outcomes = {o.path: o for o in _run(box, m, _fake_scorer())}
    assert outcomes["a.csv"].status == "done"
    assert outcomes["a.parquet"].status == "quarantined" and "belongs to a.csv" in outcomes["a.parquet"].error
    assert (box["outbox"] / "a.anomalies.csv").read_text() == "a,b\n1,2\n"


def test_same_name_with_new_content_is_scored_again(box):
    src = _put(box["inbox"], "daily.csv")
    m = Manifest(box["outbox"] / "manifest.sqlite3")
    assert [o.status for o in _run(box, m, _fake_scorer())] == ["done"]
    src.write_text("a,b\n5,6\n")
    _old(src)
    assert [o.status for o in _run(box, m, _fake_scorer())] == ["done"]
    assert (box["outbox"] / "daily.anomalies.csv").read_text() == "a,b\n5,6\n"


def test_a_folder_kind_makes_each_folder_one_item(box, monkeypatch):
    monkeypatch.setitem(inbox_discovery.KINDS, "img", inbox_discovery.Kind("img", frozenset({".png"}), folder=True))
    for rel in ("shots/1.png", "shots/2.png", "t.csv"):
        _put(box["inbox"], rel)
    items = inbox_discovery.discover(box["inbox"], ("table", "img"))
    assert [(i.rel, i.kind) for i in items] == [("shots", "img"), ("t.csv", "table")]
    before = inbox_discovery.fingerprint(items[0])
    _put(box["inbox"], "shots/3.png", "more")
    assert inbox_discovery.fingerprint(items[0]).sha256 != before.sha256
    with pytest.raises(InputError, match=r"unknown inbox kind\(s\) \['video'\]"):
        inbox_discovery.discover(box["inbox"], ("video",))


def test_expand_inputs_maps_a_dataset_folder_to_one_report_folder_per_part(tmp_path):
    ds = tmp_path / "sales"
    for rel in ("year=1/p0.parquet", "year=2/p0.parquet", "p1.csv"):
        _put(ds, rel)
    single = _put(tmp_path, "one.csv")
    pairs = inbox_discovery.expand_inputs([ds, single], tmp_path / "out")
    out = (tmp_path / "out").resolve()
    assert [(p.relative_to(tmp_path).as_posix(), o) for p, o in pairs] == [
        ("sales/p1.csv", out / "sales"),
        ("sales/year=1/p0.parquet", out / "sales" / "year=1"),
        ("sales/year=2/p0.parquet", out / "sales" / "year=2"),
        ("one.csv", tmp_path / "out"),
    ]


# ---- the flow, with the session's registered model -------------------------------------------------------


def _bad_inbox_entries(inbox_dir: Path) -> Path:
    """A name with non-UTF-8 bytes, a symlink loop and a FIFO, each named like a table; returns the FIFO."""
    fd = os.open(os.fsencode(inbox_dir) + b"/bad\xff.csv", os.O_CREAT | os.O_WRONLY)
    os.write(fd, b"a,b\n1,2\n")
    os.close(fd)
    (inbox_dir / "loop.csv").symlink_to("loop.csv")
    fifo = inbox_dir / "pipe.csv"
    os.mkfifo(fifo)
    t = time.time() - 60
    for name in os.listdir(os.fsencode(inbox_dir)):
        os.utime(os.path.join(os.fsencode(inbox_dir), name), (t, t), follow_symlinks=False)
    return fifo


def test_a_non_utf8_name_a_symlink_loop_and_a_fifo_are_quarantined_unread_and_the_rest_scored(box):
    fifo = _bad_inbox_entries(box["inbox"])
    _put(box["inbox"], "good.csv")
    calls: list[Path] = []
    manifest = Manifest(box["outbox"] / "manifest.sqlite3")
    outcomes: list[inbox.Outcome] = []
    err = call_within(lambda: outcomes.extend(_run(box, manifest, _fake_scorer(calls))), [fifo])
    assert err is None, err  # before: a UnicodeEncodeError (SQLite), a RuntimeError (Path.resolve)
    by_path = {o.path: o for o in outcomes}
    assert {k: o.status for k, o in by_path.items()} == {
        "bad\ufffd.csv": "quarantined",
        "good.csv": "done",
        "loop.csv": "quarantined",
        "pipe.csv": "quarantined",
    }
    assert calls == [box["inbox"] / "good.csv"]
    reasons = {
        "bad\ufffd.csv": "refused: its name b'bad\\xff.csv' is not valid UTF-8: rename it (UTF-8), then put it back",
        "loop.csv": "refused: a symlink loop: loop.csv -> loop.csv",
        "pipe.csv": f"refused: inbox file {fifo.resolve()} is not a regular file: it is a FIFO (named pipe): "
        "the inbox takes regular files only",
    }
    for rel, reason in reasons.items():
        assert by_path[rel].error.startswith(reason + "; moved to ")
        assert f"reason: {reason}\n" in (box["quarantine"] / f"{rel}.reason.txt").read_text(encoding="utf-8")
    assert (box["quarantine"] / "bad\ufffd.csv").read_bytes() == b"a,b\n1,2\n"
    assert (box["quarantine"] / "loop.csv").is_symlink() and (box["quarantine"] / "pipe.csv").is_fifo()
    assert os.listdir(box["inbox"]) == ["good.csv"]
    assert {e.path: e.status for e in manifest.entries()} == {k: o.status for k, o in by_path.items()}
    assert _run(box, manifest, _fake_scorer(calls)) == []  # recorded: nothing new on the next run
