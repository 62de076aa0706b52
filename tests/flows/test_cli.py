"""The CLIs as a user runs them: subprocesses, exit codes, one-line errors, no tracebacks."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import cli_env

ROOT = Path(__file__).resolve().parents[2]


def _run(
    args: list[str], home: Path, tmp: Path, ephemeral: bool = False, **env_vars: str
) -> subprocess.CompletedProcess:
    """``python ARGS`` as a user runs it, with ``env_vars`` set (see ``tests.conftest.cli_env``)."""
    env = cli_env(home, ephemeral, **env_vars)
    return subprocess.run([sys.executable, *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def test_score_cli_writes_one_report_row_per_input_row(registered_model, session_home, test_table, tmp_path):
    df, _ = test_table
    a, b = tmp_path / "first.csv", tmp_path / "second.parquet"
    df.to_csv(a, index=False)
    df.head(37).to_parquet(b)
    r = _run(
        [
            "-m",
            "flows.score",
            str(a),
            str(b),
            "--model",
            "models:/test-model@champion",
            "--out",
            str(tmp_path / "reports"),
        ],
        session_home,
        tmp_path,
        ephemeral=True,  # the embedded default: Prefect's ephemeral API
    )
    assert r.returncode == 0, r.stderr
    first = pd.read_csv(tmp_path / "reports" / "first.anomalies.csv", dtype={"id": str})
    second = pd.read_csv(tmp_path / "reports" / "second.anomalies.csv", dtype={"id": str})
    assert len(first) == len(df) and first["id"].tolist() == df["id"].tolist()
    assert len(second) == 37
    assert f"flagged {int(first['is_anomaly'].sum())} of {len(df)} rows" in r.stdout


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("missing-column", 2, "missing column(s) ['b']"),
        ("unknown-model", 3, "models:/no-such-model@champion not found in the registry"),
        ("no-file", 2, "input file not found"),
    ],
)
def test_score_cli_bad_input_exits_nonzero_with_one_line(
    case, code, message, registered_model, session_home, test_table, tmp_path
):
    df, _ = test_table
    src = tmp_path / "in.csv"
    model = "models:/test-model@champion"
    if case == "missing-column":
        df.drop(columns=["b"]).to_csv(src, index=False)
    elif case == "unknown-model":
        df.to_csv(src, index=False)
        model = "models:/no-such-model@champion"
    r = _run(["-m", "flows.score", str(src), "--model", model, "--out", str(tmp_path / "o")], session_home, tmp_path)
    assert r.returncode == code, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    errors = [line for line in r.stderr.splitlines() if line.startswith("python -m flows.score: error:")]
    assert len(errors) == 1


def test_score_cli_conflicting_rules_exit_2(tmp_path, session_home):
    r = _run(["-m", "flows.score", "x.csv", "--fdr", "0.1", "--alpha", "0.05"], session_home, tmp_path)
    assert r.returncode == 2 and "fdr cannot be combined with alpha or conditional" in r.stderr


def test_cli_usage_errors_exit_2(tmp_path, session_home):
    r = _run(["-m", "flows.train", "--data", "x.csv", "--alpha", "abc"], session_home, tmp_path)
    assert r.returncode == 2 and "invalid float value: 'abc'" in r.stderr
    r = _run(["-m", "flows.train", "--data", "x.csv", "--alpha", "3"], session_home, tmp_path)
    assert r.returncode == 2 and "alpha: Input should be less than 1" in r.stderr
