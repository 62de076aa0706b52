"""The train and score flows under prefect_test_harness, with a real SQLite MLflow store."""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from flows.config import ScoreConfig, TrainConfig
from flows.score_flow import BatchFailed, score
from flows.tracking import load_model
from flows.train_flow import train
from pipeline.errors import InputError, ModelError
from tests.conftest import make_table


def test_train_flow_registers_a_version_with_the_alias(registered_model, session_home):
    assert registered_model["model_uri"] == "models:/test-model@champion"
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias("test-model", "champion")
    assert str(mv.version) == registered_model["version"]
    run = client.get_run(registered_model["run_id"])
    assert run.data.metrics["threshold"] == pytest.approx(registered_model["threshold"])
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == registered_model["epochs"]
    assert run.data.params["alpha"] == "0.05"
    assert float(run.data.params["kl_weight_used"]) == registered_model["kl_weight"] in (1.0, 0.2)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "calibration")}
    assert {
        "calibration/calibration_scores.csv",
        "calibration/score_distribution.png",
        "calibration/calibration.json",
    } <= artifacts
    assert (session_home / "mlflow.db").is_file()  # the embedded store lives in VAE_ANOMALY_HOME


def test_pyfunc_predict_matches_the_score_flow(registered_model, prefect_harness, test_table, tmp_path):
    df, _ = test_table
    src = tmp_path / "batch.csv"
    df.to_csv(src, index=False)
    [summary] = score(ScoreConfig(inputs=[src], model="models:/test-model@champion", out=tmp_path / "out"))
    report = pd.read_csv(summary["report"])
    pyfunc = mlflow.pyfunc.load_model("models:/test-model@champion")
    pred = pyfunc.predict(pd.read_csv(src))
    assert np.allclose(pred["score"].to_numpy(), report["score"].to_numpy(), rtol=1e-7)
    assert pred["is_anomaly"].tolist() == report["is_anomaly"].tolist()
    assert summary["model_version"] == registered_model["version"] and summary["rows"] == len(df)


def test_score_flow_fails_cleanly_on_a_bad_file_and_scores_the_good_one(
    registered_model, prefect_harness, test_table, tmp_path
):
    df, _ = test_table
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    df.to_csv(good, index=False)
    df.drop(columns=["a"]).to_csv(bad, index=False)
    with pytest.raises(BatchFailed) as failed:
        score(ScoreConfig(inputs=[good, bad], model="models:/test-model@champion", out=tmp_path / "o"))
    assert "bad.csv: missing column(s) ['a']" in str(failed.value) and failed.value.exit_code == 2
    assert [s["input"] for s in failed.value.summaries] == [str(good)]
    assert (tmp_path / "o" / "good.anomalies.csv").is_file()
    assert not (tmp_path / "o" / "bad.anomalies.csv").exists()


def test_unknown_alias_is_a_model_error(registered_model, prefect_harness, tmp_path):
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(ModelError, match="models:/test-model@nope not found in the registry"):
        score(ScoreConfig(inputs=[tmp_path / "x.csv"], model="models:/test-model@nope", out=tmp_path))


def test_train_flow_reports_bad_data_without_registering(prefect_harness, tmp_path):
    df, _ = make_table(60, seed=4)
    p = tmp_path / "small.csv"
    df.to_csv(p, index=False)
    with pytest.raises(InputError, match=r"alpha=0\.01 needs at least 99 normal training rows, got 60"):
        train(TrainConfig(data=p, model_name="never-registered", id_columns=["id"]))
    assert mlflow.MlflowClient().search_registered_models("name='never-registered'") == []


def test_load_model_tasks_can_run_without_prefect(registered_model):
    from flows.score_flow import load_model as load_model_task

    model = load_model_task.fn("models:/test-model@champion", "table")  # the task's body, no flow run
    assert model.version == registered_model["version"] and model.detector.threshold_ > 0
    with pytest.raises(ModelError, match="no-such-alias") as missing:
        load_model_task.fn("models:/test-model@no-such-alias")
    assert missing.value.exit_code == 3 and "test-model has aliases @champion (v" in str(missing.value)
    with pytest.raises(ModelError, match=r"registered models: .*test-model"):  # an unknown name lists the names
        load_model_task.fn("models:/no-such-model@champion")
    with pytest.raises(InputError, match="the inputs are images but model models:/test-model@champion is a table"):
        load_model_task.fn("models:/test-model@champion", "image")


def test_configs_reject_unknown_fields_and_bad_values():
    with pytest.raises(ValueError, match="extra"):
        TrainConfig(data=Path("x.csv"), epochs=3)
    with pytest.raises(ValueError, match="less than 1"):
        TrainConfig(data=Path("x.csv"), alpha=2)
    with pytest.raises(ModelError, match=r"model URI 'vae-anomaly' is not a registry URI: expected models:/NAME@ALIAS"):
        ScoreConfig(inputs=[Path("x.csv")], model="vae-anomaly")  # exit 3, as for any URI outside the registry


def test_score_flow_rules_labels_health_and_summary_json(registered_model, prefect_harness, test_table, tmp_path):
    df, y = test_table
    src = tmp_path / "labelled.csv"
    df.assign(truth=y).to_csv(src, index=False)
    out = tmp_path / "o"
    [s] = score(ScoreConfig(inputs=[src], model="models:/test-model@champion", out=out, fdr=0.1, label_column="truth"))
    report = pd.read_csv(s["report"])
    assert list(report.columns)[5:7] == ["p_value", "q_value"]
    assert report["is_anomaly"].tolist() == (report["q_value"] <= 0.1).astype(int).tolist()
    assert s["rule"].startswith("Benjamini-Hochberg at 0.1")
    assert s["metrics"]["n_labelled_anomalies"] == int(y.sum()) and s["metrics"]["auroc"] > 0.8
    assert set(s["health"]) >= {"binomial_pvalue", "ks_pvalue", "warning"}
    saved = (out / "labelled.summary.json").read_text()
    assert '"rule": "Benjamini-Hochberg at 0.1' in saved
    runs = mlflow.search_runs(experiment_names=["vae-anomaly-scoring"])
    assert len(runs) >= 1 and "metrics.ks_pvalue" in runs.columns

    [f1] = score(
        ScoreConfig(inputs=[src], model="models:/test-model@champion", out=out, label_column="truth", f1_optimal=True)
    )
    assert any("F1-optimal threshold" in n for n in f1["notes"])
    # BH's flags are a threshold on the same scores, so the F1-optimal threshold does at least as well
    assert f1["metrics"]["f1"] >= s["metrics"]["f1"] - 1e-9


def test_score_flow_f1_optimal_without_anomalies_keeps_the_fpr_rule(
    registered_model, prefect_harness, test_table, tmp_path
):
    df, y = test_table
    src = tmp_path / "normal_only.csv"
    df[y == 0].assign(truth=0).to_csv(src, index=False)
    [s] = score(
        ScoreConfig(
            inputs=[src], model="models:/test-model@champion", out=tmp_path, label_column="truth", f1_optimal=True
        )
    )
    assert any("no labelled anomalies" in n for n in s["notes"])
    assert s["flagged"] < 0.2 * s["rows"]  # never falls back to flagging everything


def test_train_config_maps_onto_the_trainer_defaults():
    from vae.config import TrainConfig as TrainerConfig

    cfg = TrainConfig(data=Path("x.csv"), trim_fraction=0.05, seed=3).trainer_config()
    default = TrainerConfig(seed=3)
    assert cfg.trim_fraction == 0.05 and cfg.seed == 3
    assert (cfg.max_epochs, cfg.batch_size, cfg.lr) == (default.max_epochs, default.batch_size, default.lr)
    assert TrainConfig(data=Path("x.csv"), max_epochs=7).trainer_config().max_epochs == 7


def test_train_flow_with_a_segment_column_logs_each_segments_threshold(prefect_harness, tmp_path):
    df, _ = make_table(800, seed=9)
    p = tmp_path / "shapes.csv"
    df.to_csv(p, index=False)
    config = TrainConfig(
        data=p, model_name="segmented", id_columns=["id"], segment_column="shape", alpha=0.05, max_epochs=3
    )
    out = train(config)
    assert out["segments"] == {
        "circle": pytest.approx(80, abs=25),
        "square": pytest.approx(48, abs=20),
        "star": pytest.approx(32, abs=16),
    }
    assert out["calibration"].startswith("split-conformal on 160 held-out calibration rows")
    client = mlflow.MlflowClient()
    run = client.get_run(out["run_id"])
    assert run.data.params["segment_column"] == "shape" and run.data.params["calibration_rule"] == "split"
    logged = mlflow.artifacts.load_dict(f"runs:/{out['run_id']}/calibration/calibration.json")
    assert logged["segments"]["column"] == "shape" and set(logged["segments"]["thresholds"]) == {
        "circle",
        "square",
        "star",
    }
    det = load_model(out["model_uri"]).detector
    assert det.segments_.values == ["circle", "square", "star"]
