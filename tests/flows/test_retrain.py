"""The retrain flow under the Prefect harness with the session's SQLite MLflow store: a first model becomes
champion, a challenger trained on drifted data replaces a champion whose threshold broke, a worse challenger
(trained on contaminated data, through the CLI) does not, and every decision is a run plus tags on both versions."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest

from flows.config import RetrainConfig
from flows.retrain import main, retrain
from flows.tracking import alias_version
from pipeline.errors import InputError
from tests.conftest import make_table
from tests.flows.test_tracking_errors import harness_env

NAME = "retrain-model"


def drifted(n: int, seed: int, anomalies: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """The table of conftest after the world moved: ``a`` shifted by three standard deviations, ``c`` scaled."""
    df, y = make_table(n, seed=seed, anomalies=anomalies)
    df["a"] += 6.0
    df["c"] *= 2.0
    return df, y


def test_retrain_promotes_a_better_challenger_and_keeps_the_champion_against_a_worse_one(
    prefect_harness, session_home, tmp_path
):
    first = tmp_path / "first.csv"
    make_table(300, seed=31)[0].to_csv(first, index=False)
    common = {"model_name": NAME, "id_columns": ["id"], "alpha": 0.1, "max_epochs": 8}
    s1 = retrain(RetrainConfig(data=first, **common))
    assert s1["promoted"] and s1["rule"] == "no-champion" and s1["champion_version"] is None
    client = mlflow.MlflowClient()  # the flow pointed MLflow at the session's store
    assert alias_version(NAME, "champion") == alias_version(NAME, "challenger") == s1["challenger_version"]

    # New normal data has drifted: the champion flags far more than its 10%; the challenger learnt the new data.
    new = tmp_path / "new.csv"
    drifted(300, seed=32)[0].to_csv(new, index=False)
    s2 = retrain(RetrainConfig(data=new, **common))
    assert s2["promoted"] and s2["rule"] == "calibration", s2["reason"]
    assert s2["champion"]["fpr_pvalue"] < 0.01 < s2["challenger"]["fpr_pvalue"]
    assert s2["champion"]["n_normal"] == s2["challenger"]["n_normal"] == 60  # the same held-out rows
    v1, v2 = s1["challenger_version"], s2["challenger_version"]
    assert alias_version(NAME, "champion") == v2 and int(v2) == int(v1) + 1
    tags = client.get_model_version(NAME, v2).tags
    assert tags["retrain.outcome"] == "promoted" and tags["retrain.champion_version"] == v1
    assert client.get_model_version(NAME, v1).tags["retrain.last_challenge"].startswith(f"v{v2} promoted")
    run = client.get_run(s2["decision_run_id"])
    assert run.data.tags["outcome"] == "promoted" and run.data.params["rule"] == "calibration"
    assert run.data.metrics["champion_fpr"] == pytest.approx(s2["champion"]["fpr"])
    assert run.data.metrics["challenger_fpr"] == pytest.approx(s2["challenger"]["fpr"])
    assert (run.data.params["champion_version"], run.data.params["challenger_version"]) == (v1, v2)

    # Labelled new data whose "normal" rows are contaminated: 150 unlabelled rows of the labelled anomalies' kind
    # (b shifted by 4). The challenger learns them as normal and ranks the labelled anomalies worse: kept.
    labelled = tmp_path / "labelled.csv"
    df = drifted(500, seed=33)[0]
    rows = np.random.default_rng(0).permutation(len(df))[:210]
    df.loc[rows, "b"] += 4.0
    df["truth"] = 0
    df.loc[rows[:60], "truth"] = 1
    df.to_csv(labelled, index=False)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.retrain",
            str(labelled),
            "--model-name",
            NAME,
            "--label-column",
            "truth",
            "--id-columns",
            "id",
            "--alpha",
            "0.1",
            "--max-epochs",
            "8",
        ],
        cwd=tmp_path,
        env=harness_env(session_home, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    v3 = alias_version(NAME, "challenger")
    assert int(v3) == int(v2) + 1 and alias_version(NAME, "champion") == v2, r.stdout
    assert f"kept {NAME} v{v2} as champion; v{v3} stays the challenger" in r.stdout
    assert "rule: labelled-auroc: kept the champion: AUROC" in r.stdout
    assert client.get_model_version(NAME, v3).tags["retrain.outcome"] == "kept"
    [run] = mlflow.search_runs(
        experiment_names=["vae-anomaly-retrain"],
        filter_string=f"params.challenger_version = '{v3}' and params.model_name = '{NAME}'",
        output_format="list",
    )
    m = run.data.metrics
    assert m["challenger_auroc"] < m["champion_auroc"] - 0.1 and m["champion_n_anomalies"] == 60
    assert {"champion_auprc", "challenger_auprc", "champion_fpr_pvalue"} <= set(m)


def test_retrain_refuses_a_champion_that_cannot_score_the_new_data_before_training(registered_model, tmp_path):
    data = tmp_path / "renamed.csv"
    make_table(300, seed=34)[0].rename(columns={"b": "beta"}).to_csv(data, index=False)
    with pytest.raises(InputError, match=r"\(held-out rows, champion\): missing column\(s\) \['b'\]"):
        retrain(RetrainConfig(data=data, model_name="test-model", id_columns=["id"], alpha=0.1, max_epochs=2))
    assert alias_version("test-model", "challenger") is None  # nothing was trained or registered


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--holdout-fraction", "0.95"], "holdout_fraction: Input should be less than 0.9 (got 0.95)"),
        (["--alias", "champion"], "the challenger's alias must differ from the champion's, both are 'champion'"),
        (["--margin", "abc"], "argument --margin: invalid float value: 'abc'"),
    ],
)
def test_retrain_cli_usage_errors_exit_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) if args[0] == "--margin" else contextlib.nullcontext():
        assert main(["x.csv", *args]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("python -m flows.retrain: error: ") and message in line
