"""The inbox: exactly-once claims (threads, processes, SIGKILL), retries and quarantine, path safety,
partial and changing files, duplicates; then the score-inbox flow itself under prefect_test_harness."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from pipeline import inbox, inbox_discovery
from pipeline.errors import InputError
from pipeline.manifest import Claim, Fingerprint, Manifest, Skip, owner_alive, this_owner
from tests.flows.test_bad_inputs_cli import cli_within
from tests.pipeline.test_bad_inputs import call_within

ROOT = Path(__file__).resolve().parents[2]


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
        from pipeline.io import sha256_file

        return {
            "report": str(report),
            "input_sha256": sha256_file(path),
            "model_uri": "models:/m@champion",
            "model_version": "7",
        }

    return score


@pytest.fixture
def box(tmp_path: Path) -> dict[str, Path]:
    d = {k: tmp_path / k for k in ("inbox", "outbox")}
    for p in d.values():
        p.mkdir()
    d["quarantine"] = d["outbox"] / "quarantine"
    return d


def _run(box: dict[str, Path], manifest: Manifest, scorer, min_age_s: float = 1.0) -> list[inbox.Outcome]:
    items = inbox_discovery.pending(
        inbox_discovery.discover(box["inbox"], exclude=(box["outbox"],)), manifest, min_age_s
    )
    return [inbox.process_item(i, manifest, scorer, box["outbox"], box["quarantine"]) for i in items]


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
from pipeline import inbox, inbox_discovery
from pipeline.manifest import Manifest
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
from pipeline import inbox_discovery
from pipeline.manifest import Manifest
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
        with open(path, "a") as f:  # the writer was not done after all
            f.write("3,4\n")
        return summary

    [o] = _run(box, m, appending)
    assert o.status == "changed" and "changed while it was scored" in o.error
    assert not (box["outbox"] / "grow.anomalies.csv").exists()
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


def test_score_inbox_flow_scores_new_files_once_and_quarantines_a_bad_one(
    registered_model, prefect_harness, test_table, box
):
    from flows.config import InboxConfig
    from flows.inbox import InboxFailed, score_inbox

    df, _ = test_table
    df.head(50).to_csv(box["inbox"] / "good.csv", index=False)
    (box["inbox"] / "nested").mkdir()
    df.head(20).to_parquet(box["inbox"] / "nested" / "good2.parquet")
    df.drop(columns=["a"]).head(10).to_csv(box["inbox"] / "bad.csv", index=False)
    for p in box["inbox"].rglob("*.*"):
        _old(p)
    config = InboxConfig(
        inbox=box["inbox"], outbox=box["outbox"], model="models:/test-model@champion", max_attempts=1, min_age_s=1
    )
    with pytest.raises(InboxFailed, match=r"bad\.csv: quarantined") as failed:
        score_inbox(config)
    outcomes = {o["path"]: o for o in failed.value.outcomes}
    assert {k: o["status"] for k, o in outcomes.items()} == {
        "bad.csv": "quarantined",
        "good.csv": "done",
        "nested/good2.parquet": "done",
    }
    report = pd.read_csv(box["outbox"] / "nested" / "good2.anomalies.csv", dtype={"id": str})
    assert report["id"].tolist() == df["id"].head(20).tolist()
    assert (box["outbox"] / "good.summary.json").is_file()
    assert "missing column(s) ['a']" in (box["quarantine"] / "bad.csv.reason.txt").read_text()
    entries = {e.path: e for e in Manifest(config.manifest_path()).entries()}
    assert entries["good.csv"].model_version == registered_model["version"]
    run_id = entries["good.csv"].run_id  # the flow run's id, the same for every file it scored
    assert uuid.UUID(run_id) and entries["nested/good2.parquet"].run_id == entries["bad.csv"].run_id == run_id
    assert score_inbox(config) == []  # nothing new: not scored twice


def test_inbox_config_and_cli_refuse_contradictions(tmp_path):
    from flows.config import InboxConfig
    from flows.inbox import build_parser, schedule_of

    with pytest.raises(ValueError, match="must be separate folders"):
        InboxConfig(inbox=tmp_path, outbox=tmp_path / "out")
    with pytest.raises(ValueError, match="extra"):
        InboxConfig(inbox=tmp_path / "i", outbox=tmp_path / "o", interval=5)
    parse = build_parser().parse_args
    assert schedule_of(parse(["--inbox", "i", "--outbox", "o"])) is None
    assert schedule_of(parse(["--inbox", "i", "--outbox", "o", "--interval", "30"])) == {"interval": 30.0}
    assert schedule_of(parse(["--inbox", "i", "--outbox", "o", "--serve", "--cron", "*/5 * * * *"])) == {
        "cron": "*/5 * * * *"
    }
    for argv, message in [
        (["--serve"], "--serve needs a schedule"),
        (["--once", "--interval", "5"], "--once cannot"),
        (["--interval", "5", "--cron", "* * * * *"], "not both"),
        (["--interval", "0"], "> 0"),
    ]:
        with pytest.raises(InputError, match=message):
            schedule_of(parse(["--inbox", "i", "--outbox", "o", *argv]))


def test_prefect_yaml_deploys_score_inbox_with_parameters_the_flow_accepts(tmp_path, monkeypatch):
    import yaml
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.templating import apply_values

    from flows.config import InboxConfig

    [dep] = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    with pytest.raises(ValueError, match=r"inbox must name a folder, got ''"):  # the variable was not exported
        InboxConfig(**apply_values(dep["parameters"], {})["config"])
    monkeypatch.setenv("VAE_ANOMALY_INBOX", str(tmp_path / "in"))
    monkeypatch.setenv("VAE_ANOMALY_OUTBOX", str(tmp_path / "out"))
    params = apply_values(dep["parameters"], {})  # what `prefect deploy` does with {{ $VAR }}
    assert InboxConfig(**params["config"]).inbox == tmp_path / "in"
    path, name = dep["entrypoint"].split(":")
    loaded = load_flow_from_entrypoint(f"{ROOT / path}:{name}")  # how a worker's flow run loads it
    assert loaded.name == "score-inbox"
    assert isinstance(loaded.validate_parameters(params)["config"], InboxConfig)
    assert CronSchedule(cron=dep["schedules"][0]["cron"]).cron == "*/5 * * * *"


def test_serve_without_a_prefect_server_is_a_one_line_error(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.config import InboxConfig
    from flows.inbox import serve

    config = InboxConfig(inbox=tmp_path / "i", outbox=tmp_path / "o")
    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        pytest.raises(InputError, match="--serve needs a running Prefect server: start one with"),
    ):
        serve(config, {"interval": 60}, "score-inbox")


def test_inbox_cli_once_prints_outcomes_and_exits_2_for_a_quarantined_file(
    registered_model, prefect_harness, test_table, box, capsys
):
    from flows.inbox import main

    df, _ = test_table
    df.head(30).to_csv(box["inbox"] / "ok.csv", index=False)
    (box["inbox"] / "broken.parquet").write_bytes(b"PAR1 not really")
    argv = [
        "--inbox",
        str(box["inbox"]),
        "--outbox",
        str(box["outbox"]),
        "--model",
        "models:/test-model@champion",
        "--min-age",
        "0",
        "--max-attempts",
        "1",
        "--once",
    ]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert f"{box['inbox'].resolve()}: " in out and "1 done" in out and "1 quarantined" in out
    [line] = [x for x in err.splitlines() if x.startswith("python -m flows.inbox: error:")]
    assert "broken.parquet: quarantined" in line and "not a readable Parquet file" in line
    assert main(argv) == 0 and "no new files" in capsys.readouterr().out


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


def test_inbox_cli_quarantines_a_non_utf8_name_a_symlink_loop_and_a_fifo_in_one_line_each(
    registered_model, session_home, test_table, box, tmp_path
):
    _bad_inbox_entries(box["inbox"])
    test_table[0].head(30).to_csv(box["inbox"] / "ok.csv", index=False)
    _old(box["inbox"] / "ok.csv")
    argv = ["--inbox", str(box["inbox"]), "--outbox", str(box["outbox"]), "--min-age", "1", "--max-attempts", "1"]
    argv += ["--model", "models:/test-model@champion", "--once"]
    r = cli_within(["-m", "flows.inbox", *argv], session_home, tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert "3 quarantined, 1 done" in r.stdout
    errors = [x for x in r.stderr.splitlines() if x.startswith("python -m flows.inbox: error:")]
    assert len(errors) == 3 and all(": quarantined: refused: " in x for x in errors), r.stderr
    names = [x.removeprefix("python -m flows.inbox: error: ").split(": quarantined")[0] for x in errors]
    assert names == ["bad\ufffd.csv", "loop.csv", "pipe.csv"]
    assert (box["outbox"] / "ok.anomalies.csv").is_file()
