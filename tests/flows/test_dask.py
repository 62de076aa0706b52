"""Scoring on Dask (prefect-dask's DaskTaskRunner) gives byte-identical reports to scoring in order."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from flows.config import InboxConfig, ScoreConfig
from flows.parallel import dask_task_runner


def test_dask_options_build_the_task_runner():
    assert dask_task_runner(ScoreConfig(inputs=[Path("x.csv")])) is None
    remote = dask_task_runner(ScoreConfig(inputs=[Path("x.csv")], dask_address="tcp://10.0.0.5:8786"))
    assert remote.address == "tcp://10.0.0.5:8786" and remote.cluster_kwargs == {}
    local = dask_task_runner(InboxConfig(inbox=Path("i"), outbox=Path("o"), dask_workers=3, dask_processes=False))
    assert local.address is None
    assert local.cluster_kwargs == {
        "n_workers": 3,
        "threads_per_worker": 1,
        "processes": False,
        "dashboard_address": None,
    }
    with pytest.raises(ValueError, match="not both"):
        ScoreConfig(inputs=[Path("x.csv")], dask_address="tcp://h:1", dask_workers=2)
    with pytest.raises(ValueError, match="dask_address"):
        ScoreConfig(inputs=[Path("x.csv")], dask_address="not an address")


def test_a_partitioned_dataset_scored_on_a_two_worker_cluster_matches_scoring_in_order(
    registered_model, prefect_harness, test_table, tmp_path, monkeypatch
):
    from prefect_dask import DaskTaskRunner

    from flows.score_flow import score

    df, _ = test_table
    ds = tmp_path / "sales"
    for i, rel in enumerate(("region=north/part-0.parquet", "region=south/part-0.parquet", "part-9.parquet")):
        (ds / rel).parent.mkdir(parents=True, exist_ok=True)
        df.iloc[i * 150 : (i + 1) * 150].to_parquet(ds / rel)
    single = tmp_path / "single.csv"
    df.iloc[450:].to_csv(single, index=False)
    submitted: list[str] = []
    original = DaskTaskRunner.submit

    def spy(self, task, parameters, *args, **kwargs):
        submitted.append(Path(parameters["source"]).name)
        return original(self, task, parameters, *args, **kwargs)

    monkeypatch.setattr(DaskTaskRunner, "submit", spy)
    model = "models:/test-model@champion"
    in_order = score(ScoreConfig(inputs=[ds, single], model=model, out=tmp_path / "seq"))
    assert submitted == []
    on_dask = score(
        ScoreConfig(inputs=[ds, single], model=model, out=tmp_path / "dask", dask_workers=2, dask_processes=False)
    )
    assert sorted(submitted) == ["part-0.parquet", "part-0.parquet", "part-9.parquet", "single.csv"]
    reports = sorted(p.relative_to(tmp_path / "seq") for p in (tmp_path / "seq").rglob("*.anomalies.csv"))
    assert [r.as_posix() for r in reports] == [
        "sales/part-9.anomalies.csv",
        "sales/region=north/part-0.anomalies.csv",
        "sales/region=south/part-0.anomalies.csv",
        "single.anomalies.csv",
    ]
    for r in reports:
        assert (tmp_path / "dask" / r).read_bytes() == (tmp_path / "seq" / r).read_bytes(), r
    assert [s["rows"] for s in on_dask] == [s["rows"] for s in in_order] == [150, 150, 150, len(df) - 450]


def test_loading_the_model_leaves_sys_path_as_it_was(registered_model):
    """MLflow prepends the model's code snapshot to sys.path; Dask worker processes copy sys.path, so they would
    import that stale copy of pipeline/ (a task then fails to deserialize and the flow waits forever)."""
    from flows.score_flow import load_model

    before = list(sys.path)
    model = load_model.fn("models:/test-model@champion")
    assert model.version == registered_model["version"]
    assert sys.path == before
