"""Faults and determinism: a scoring run killed at any point leaves a complete report or none, and a re-run
in another process writes the same bytes as an uninterrupted run."""

import contextlib
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from pipeline.score.report import atomic_writer, build_report, remove_stale_temporaries, write_csv_atomic
from tests.conftest import cli_env, make_table
from tests.flows.test_cli import ROOT

WRITER = """
import sys, time
from pipeline.score.report import atomic_writer
with atomic_writer(sys.argv[1]) as f:
    f.write("row,score\\n0,1.5\\n")
    f.flush()
    print("half-written", flush=True)
    time.sleep(60)
    f.write("1,2.5\\n")
"""


def test_writer_killed_mid_write_leaves_no_file_and_the_next_write_cleans_up(tmp_path):
    target = tmp_path / "r.anomalies.csv"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "half-written"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert not target.exists()
    [leftover] = tmp_path.glob(".r.anomalies.csv.*.tmp")  # documented: ".<name>.<pid>.<random>.tmp"
    assert f".{p.pid}." in leftover.name
    frame = build_report(pd.DataFrame({"id": ["a"]}), np.array([1.0]), 2.0, ["id"])
    write_csv_atomic(frame, target)
    assert target.read_text() == "row,id,score,threshold,is_anomaly\n0,a,1,2,0\n"
    assert not leftover.exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_live_writers_temporary_file_is_never_removed(tmp_path):
    target = tmp_path / "x.csv"
    live = tmp_path / f".x.csv.{os.getppid()}.abc.tmp"  # a process that exists (our parent)
    live.write_text("in progress")
    with atomic_writer(target) as f:
        f.write("done\n")
    assert remove_stale_temporaries(target) == [] and live.exists()
    try:
        with atomic_writer(target) as f:
            f.write("partial")
            raise RuntimeError("crash")
    except RuntimeError:
        pass
    assert target.read_text() == "done\n"  # the old report survives a failed write
    assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == [live.name]


def test_score_cli_killed_at_random_points_never_leaves_a_partial_report(registered_model, session_home, tmp_path):
    src = tmp_path / "big.csv"
    make_table(20_000, seed=8)[0].to_csv(src, index=False)
    out = tmp_path / "out"
    final = out / "big.anomalies.csv"
    cmd = [sys.executable, "-m", "flows.score", str(src), "--model", "models:/test-model@champion", "--out", str(out)]
    env = cli_env(session_home)

    t0 = time.monotonic()
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    duration = time.monotonic() - t0
    assert first.returncode == 0, first.stderr
    reference = final.read_bytes()
    assert reference.count(b"\n") == 20_001
    final.unlink()

    # late in the run, where the report is being written (its first seconds check arguments, inputs and model)
    points = [f * duration for f in (0.6, 0.75, 0.9, random.Random(0).uniform(0.6, 0.95))]
    for after in points:
        run = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )  # its own group: the Prefect server it starts dies too
        deadline = time.monotonic() + after
        while time.monotonic() < deadline and run.poll() is None:
            if final.exists():  # whenever a report is visible, it is the whole report
                assert final.read_bytes() == reference
            time.sleep(0.05)
        # ProcessLookupError: it finished first (a warm run is faster than the first): also fine
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        if final.exists():
            assert final.read_bytes() == reference, f"partial report after SIGKILL at {after:.1f}s"
            final.unlink()

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert final.read_bytes() == reference  # another process, the same bytes
    assert not list(out.glob(".big.anomalies.csv.*.tmp"))  # leftovers of killed runs are cleaned up
