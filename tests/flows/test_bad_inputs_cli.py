"""The bad-input contract as a user meets it: one CLI run over many bad files, one error line per file,
the documented exit code, no traceback; the train flow's own checks. See docs/bad-inputs.md."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from flows.config import TrainConfig
from flows.train_flow import fit_detector
from pipeline.data.split import split_rows
from pipeline.detect.detector import VAEAnomalyDetector
from pipeline.detect.training import TrainingData, check_enough_rows
from pipeline.errors import InputError
from tests.conftest import cli_env, make_table
from tests.flows.test_cli import _run
from tests.pipeline.score.test_bad_inputs import BAD_SCORING_INPUTS, _bad_file

HEADER_ONLY_REPORT = "row,id,score,threshold,is_anomaly,p_value,top_features,top_observed,top_expected,missing\n"


def cli_within(args: list[str], home: Path, tmp: Path, timeout_s: float = 180) -> subprocess.CompletedProcess:
    """``python ARGS`` as ``tests.flows.test_cli._run`` runs it, killed after ``timeout_s``: a hang fails the test."""
    env = cli_env(home)
    return subprocess.run([sys.executable, *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout_s)


CLI_CASES = [
    "missing-column",
    "wrong-type",
    "inf",
    "huge",
    "empty",
    "no-header",
    "duplicate-columns",
    "not-utf8",
    "unclosed-quote",
    "truncated-parquet",
    "not-found",
]


def test_score_cli_gives_one_error_line_per_bad_file_and_scores_the_good_ones(registered_model, session_home, tmp_path):
    bad = [_bad_file(case, tmp_path) for case in CLI_CASES]
    df, _ = make_table(30, seed=5)
    good = tmp_path / "good.csv"
    df.assign(id=["=cmd|' /C calc'!A0", "-7", *df["id"][2:]]).to_csv(good, index=False)
    header_only = tmp_path / "header-only.csv"
    header_only.write_text(",".join(df.columns) + "\n")
    out = tmp_path / "reports"
    r = _run(
        [
            "-m",
            "flows.score",
            str(good),
            *map(str, bad),
            str(header_only),
            "--model",
            "models:/test-model@champion",
            "--out",
            str(out),
        ],
        session_home,
        tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("python -m flows.score: error:")]
    assert len(errors) == len(CLI_CASES), errors
    for case in CLI_CASES:  # each file's own line, naming the file
        assert any(case in line for line in errors), case
    report = pd.read_csv(out / "good.anomalies.csv", dtype={"id": str}, keep_default_na=False)
    assert len(report) == 30 and report["id"][:2].tolist() == ["'=cmd|' /C calc'!A0", "-7"]
    assert (out / "header-only.anomalies.csv").read_text() == HEADER_ONLY_REPORT
    assert sorted(p.name for p in out.glob("*.anomalies.csv")) == ["good.anomalies.csv", "header-only.anomalies.csv"]
    assert set(CLI_CASES) <= set(BAD_SCORING_INPUTS)


def test_train_cli_refuses_a_value_that_breaks_training_with_one_line(session_home, tmp_path):
    # 600 rows at alpha 0.1 leave 120 calibration rows: split-conformal, so the row can fall in the calibration part
    df, _ = make_table(600, seed=4)
    row = int(split_rows(600, 0.15, 0.2, seed=0).cal[0])
    df.loc[row, "b"] = 1e308
    src = tmp_path / "huge.csv"
    df.to_csv(src, index=False)
    r = _run(
        [
            "-m",
            "flows.train",
            "--data",
            str(src),
            "--model-name",
            "never",
            "--id-columns",
            "id",
            "--alpha",
            "0.1",
            "--max-epochs",
            "2",
        ],
        session_home,
        tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    [line] = [x for x in r.stderr.splitlines() if x.startswith("python -m flows.train: error:")]
    # the row falls in the calibration part: its score overflows (in the train part, the loss does: see below)
    assert f"huge.csv: row {row} cannot be scored, its score overflows: column 'b' holds 1e+308" in line


def test_train_flow_checks_rows_before_training():
    det = VAEAnomalyDetector(alpha=0.05)
    check_enough_rows(det, 30, "t.csv")
    for n in (0, 9):
        with pytest.raises(InputError) as e:
            check_enough_rows(det, n, "t.csv")
        assert str(e.value) == f"t.csv: {n} rows, but training needs at least 10: give more rows"
    for n in (10, 29):
        with pytest.raises(InputError) as e:
            check_enough_rows(det, n, "t.csv")
        assert str(e.value) == (
            f"t.csv: alpha=0.05 needs at least 30 normal training rows, got {n}: give at least 30 rows or raise alpha"
        )


def test_fit_task_turns_an_overflowing_loss_into_a_named_input_error(tmp_path):
    df, _ = make_table(200, seed=4)
    df.loc[3, "a"] = -1e300
    config = TrainConfig(data=tmp_path / "x.csv", id_columns=["id"], alpha=0.1, max_epochs=2)
    with pytest.raises(InputError) as err:
        fit_detector.fn(config.detector(), TrainingData(str(tmp_path / "x.csv"), frame=df))
    assert err.value.exit_code == 2
    assert "x.csv: training failed" in str(err.value) and "column 'a' row 3 holds -1e+300" in str(err.value)


def test_unknown_model_name_alias_or_version_is_a_model_error(registered_model):
    from flows.tracking import load_model
    from pipeline.errors import ModelError

    for uri in ("models:/no-such-model@champion", "models:/test-model@nope", "models:/test-model/999"):
        try:
            load_model(uri)
        except ModelError as e:
            assert f"model {uri} not found in the registry" in str(e) and "\n" not in str(e)
        else:
            raise AssertionError(uri)


def test_an_unexpected_error_is_one_line_exit_1_unless_debugging(capsys, monkeypatch):
    from flows.cli import DEBUG_ENV, run

    def bug() -> int:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert run("python -m flows.x", bug) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "python -m flows.x: error: unexpected RuntimeError: boom (a bug: set VAE_ANOMALY_DEBUG=1 for the traceback)"
    ]
    monkeypatch.setenv(DEBUG_ENV, "1")
    try:
        run("python -m flows.x", bug)
    except RuntimeError:
        pass
    else:
        raise AssertionError("VAE_ANOMALY_DEBUG=1 re-raises")


def test_score_cli_refuses_a_fifo_named_like_a_table_and_scores_the_other_file(
    registered_model, session_home, tmp_path
):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    good = tmp_path / "good.csv"
    make_table(30, seed=5)[0].to_csv(good, index=False)
    out = tmp_path / "reports"
    argv = ["-m", "flows.score", str(fifo), str(good), "--model", "models:/test-model@champion", "--out", str(out)]
    r = cli_within(argv, session_home, tmp_path)  # before: blocked forever hashing the FIFO
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("python -m flows.score: error:")]
    message = f"input file {fifo} is not a regular file: it is a FIFO (named pipe)"
    assert errors == [f"python -m flows.score: error: {message}"]
    assert sorted(p.name for p in out.glob("*.anomalies.csv")) == ["good.anomalies.csv"]
