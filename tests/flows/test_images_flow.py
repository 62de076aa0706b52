"""The image train and score flows and the explore command under prefect_test_harness (SQLite MLflow)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from flows.config import ScoreConfig, TrainConfig
from flows.kinds import input_kind


@pytest.fixture(scope="session")
def registered_image_model(prefect_harness, digit_files) -> dict:
    """Train + register once through the real train-images flow."""
    from flows.train_flow import train

    return train(TrainConfig(data=digit_files.train, model_name="test-images", alpha=0.05, max_epochs=8, device="cpu"))


def test_kind_is_detected_from_the_input_or_given(tmp_path, digit_files):
    assert input_kind("x.csv") == "table" and input_kind(str(digit_files.train)) == "image"
    assert input_kind("t10k-images-idx3-ubyte.gz") == "image" and input_kind("b.npz") == "table"
    assert input_kind("photos/**/*.jpg") == "image" and input_kind("data/*.csv") == "table"
    assert TrainConfig(data="x.csv").kind == "table" and TrainConfig(data="x.csv").model_name == "vae-anomaly"
    images = TrainConfig(data=str(digit_files.train))
    assert images.kind == "image" and images.model_name == "vae-anomaly-images"
    assert (
        TrainConfig(data="b.npz", kind="image").kind == "image"
        and ScoreConfig(inputs="d/", kind="table").kind == "table"
    )
    assert ScoreConfig(inputs=str(digit_files.train)).model == "models:/vae-anomaly-images@champion"
    with pytest.raises(ValueError, match="kind"):
        TrainConfig(data="x.csv", kind="audio")
    with pytest.raises(ValueError, match="segment_column is an option for tables; this run trains on images"):
        TrainConfig(data=str(digit_files.train), segment_column="region")
    with pytest.raises(ValueError, match="top_k is an option for images; this run scores tables"):
        ScoreConfig(inputs="x.csv", top_k=3)
    with pytest.raises(ValueError, match="label_column is an option for tables; this run scores images"):
        ScoreConfig(inputs=str(digit_files.train), label_column="y")
    assert ScoreConfig(inputs=str(digit_files.train), label_column=None, f1_optimal=False).kind == "image"


def test_train_flow_registers_an_image_model(registered_image_model):
    r = registered_image_model
    assert r["model_uri"] == "models:/test-images@champion" and r["image_size"] == "8x8" and r["image_mode"] == "L"
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias("test-images", "champion")
    assert str(mv.version) == r["version"] and mv.tags["kind"] == "image"
    arts = {a.path for a in client.list_artifacts(r["run_id"], "figures")}
    assert {"figures/prior_samples.png", "figures/train_reconstructions.png"} <= arts
    assert len(client.get_metric_history(r["run_id"], "val_loss")) == r["epochs"]


def test_score_flow_writes_report_and_contact_sheet_and_pyfunc_agrees(
    registered_image_model, prefect_harness, digit_files, tmp_path, monkeypatch
):
    from flows.score_flow import score

    (digit_files.new_batch / "zz_corrupt.png").write_bytes(b"not a png")
    try:
        [s] = score(
            ScoreConfig(
                inputs=[str(digit_files.new_batch)], model="models:/test-images@champion", out=tmp_path, top_k=4
            )
        )
    finally:
        (digit_files.new_batch / "zz_corrupt.png").unlink()
    report = pd.read_csv(s["report"])
    assert s["rows"] == len(report) == 131 and s["errors"] == 1 and report["path"].iloc[-1] == "zz_corrupt.png"
    assert (tmp_path / "new_batch.contact_sheet.png").is_file() and (tmp_path / "new_batch.summary.json").is_file()
    assert s["model_version"] == registered_image_model["version"]
    # the contact sheet is logged to the scoring run in MLflow
    runs = mlflow.search_runs(experiment_names=["vae-anomaly-scoring"], output_format="list")
    logged = {a.path for r in runs for a in mlflow.MlflowClient().list_artifacts(r.info.run_id, "contact_sheets")}
    assert "contact_sheets/new_batch.contact_sheet.png" in logged
    pyfunc = mlflow.pyfunc.load_model("models:/test-images@champion")
    ok = report[report["error"].isna()]
    monkeypatch.setenv("VAE_ANOMALY_IMAGE_ROOT", str(digit_files.new_batch))  # paths are read only under a root
    pred = pyfunc.predict(pd.DataFrame({"path": [str(digit_files.new_batch / p) for p in ok["path"]]}))
    assert np.allclose(pred["score"].to_numpy(), ok["score"].to_numpy(), rtol=1e-7)


def test_score_cli_on_images_exit_codes(registered_image_model, prefect_harness, tmp_path, capsys):
    from flows.score import main

    empty = tmp_path / "empty"
    empty.mkdir()
    code = main([str(empty), "--kind", "image", "--model", "models:/test-images@champion", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "holds no .png/.jpg/.jpeg/.bmp images" in err[0]
    code = main([str(empty), "--kind", "image", "--model", "models:/test-images@nope"])
    assert code == 3 and "not found in the registry" in capsys.readouterr().err


def test_image_input_with_a_table_model_is_an_input_error(prefect_harness, digit_files, monkeypatch, capsys):
    from flows import tracking
    from flows.score import main
    from pipeline.detect.detector import VAEAnomalyDetector

    monkeypatch.setattr(tracking, "load_model", lambda uri: tracking.ResolvedModel(VAEAnomalyDetector(), uri, "t", "1"))
    monkeypatch.setattr(tracking, "model_facts", lambda uri: tracking.ModelFacts("t", "1", "table", {}))
    assert main([str(digit_files.new_batch), "--model", "models:/table@champion"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the inputs are images but model models:/table@champion is a table model" in err[0]


@pytest.mark.parametrize("command", ["samples", "interpolate", "latent", "reconstruct"])
def test_explore_commands_write_files_and_log_them(registered_image_model, digit_files, tmp_path, command):
    from flows.explore import main

    files = sorted(p for p in (digit_files.new_batch / "0").iterdir())[:2]
    args = {
        "samples": ["--n", "8"],
        "interpolate": [str(files[0]), str(files[1]), "--steps", "4"],
        "latent": [str(digit_files.new_batch)],
        "reconstruct": [str(f) for f in files],
    }[command]
    assert main([command, *args, "--model", "models:/test-images@champion", "--out", str(tmp_path)]) == 0
    expected = {
        "samples": ["prior_samples.png"],
        "interpolate": ["interpolation.png"],
        "latent": ["latent_2d.png", "latent_3d.html"],
        "reconstruct": ["reconstructions.png"],
    }[command]
    assert sorted(p.name for p in tmp_path.iterdir()) == expected
    assert all((tmp_path / f).stat().st_size > 1000 for f in expected)
    runs = mlflow.search_runs(
        experiment_names=["vae-anomaly-explore"], output_format="list", filter_string=f"tags.command = '{command}'"
    )
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id, command)} == {
        f"{command}/{f}" for f in expected
    }


def test_score_cli_refuses_a_fifo_image_and_an_idx_file_of_0_images_and_scores_the_folder(
    registered_image_model, session_home, digit_files, tmp_path
):
    import gzip
    import os

    from tests.flows.test_bad_inputs_cli import cli_within

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    zero = tmp_path / "zero-images-idx3-ubyte.gz"
    with gzip.open(zero, "wb") as f:
        f.write(b"".join(v.to_bytes(4, "big") for v in (2051, 0, 8, 8)))
    out = tmp_path / "reports"
    argv = [str(fifo), str(zero), str(digit_files.new_batch / "0"), "--kind", "image", "--out", str(out)]
    r = cli_within(  # before: blocked forever opening the FIFO; an IndexError traceback for the IDX file
        ["-m", "flows.score", *argv, "--model", "models:/test-images@champion"], session_home, tmp_path
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    prefix = "python -m flows.score: error: "
    errors = [x.removeprefix(prefix) for x in r.stderr.splitlines() if x.startswith(prefix)]
    assert sorted(errors) == sorted(
        [
            f"image file {fifo} is not a regular file: it is a FIFO (named pipe)",
            f"{zero} holds 0 images: its header says 0 images of 8x8; give a file with images",
        ]
    )
    assert [p.name for p in out.glob("*.anomalies.csv")] == ["0.anomalies.csv"]


def test_explore_refuses_a_fifo_image_and_more_images_than_latent_plots(
    registered_image_model, digit_files, tmp_path, monkeypatch, capsys
):
    import os

    from flows import explore
    from tests.pipeline.score.test_bad_inputs import call_within

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    model = ["--model", "models:/test-images@champion", "--out", str(tmp_path / "out")]
    codes: list[int] = []
    assert call_within(lambda: codes.append(explore.main(["reconstruct", str(fifo), *model])), [fifo]) is None
    assert codes == [2]
    assert capsys.readouterr().err.splitlines() == [
        f"python -m flows.explore: error: image {fifo} is not a regular file: it is a FIFO (named pipe)"
    ]
    monkeypatch.setattr(explore, "LATENT_MAX", 30)
    folder = digit_files.new_batch / "0"
    assert explore.main(["latent", str(folder), *model]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"python -m flows.explore: error: latent: {folder} holds 40 images, at most 30 are plotted: "
        "give a subset (a folder, files or a glob)"
    ]
