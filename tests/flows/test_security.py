"""Security: formula cells in reports, weights that would run code, credentials in the tracking URI."""

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from flows.settings import redact
from pipeline.detector import VAEAnomalyDetector
from pipeline.errors import ModelError
from pipeline.scoring import score_file
from tests.conftest import make_table
from tests.flows.test_cli import _run


class _RunsCode:
    """Unpickling this creates ``path``: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _poisoned_model(det, tmp: Path) -> tuple[Path, Path]:
    folder = det.save(tmp / "poisoned")
    marker = tmp / "code-ran"
    torch.save({"member0": _RunsCode(marker)}, folder / "weights.pt")
    return folder, marker


def test_formula_ids_are_neutralised_through_the_score_path_and_numbers_are_not(fitted_detector, tmp_path):
    df, _ = make_table(8, seed=6)
    ids = ['=HYPERLINK("http://evil","x")', "+1+1", "-cmd|' /C calc'!A0", "@SUM(A1)", "\t=1", "\r=2", "-12.5", "+3e2"]
    src = tmp_path / "formulas.csv"
    df.assign(id=ids).to_csv(src, index=False, lineterminator="\r\n")  # quotes the cell holding "\r"
    s = score_file(fitted_detector, src, tmp_path / "out")
    report = pd.read_csv(s.report, dtype={"id": str}, keep_default_na=False)
    assert len(report) == len(ids)
    assert report["id"].tolist()[:6] == ["'" + v for v in ids[:6]]
    assert report["id"].tolist()[6:] == ["-12.5", "+3e2"]  # numbers are data, not formulas
    assert report["score"].dtype == float and (report["threshold"] > 0).all()


def test_weights_that_would_run_code_are_refused_not_run(fitted_detector, tmp_path):
    folder, marker = _poisoned_model(fitted_detector, tmp_path)
    with pytest.raises(ModelError, match=r"model weights in .*poisoned refused: the file holds pickled objects"):
        VAEAnomalyDetector.load(folder)
    assert not marker.exists()
    from flows.pyfunc import DETECTOR_ARTIFACT, VAEAnomalyModel

    with pytest.raises(ModelError, match="refused"):  # the MLflow pyfunc loads through the same function
        VAEAnomalyModel().load_context(SimpleNamespace(artifacts={DETECTOR_ARTIFACT: str(folder)}))
    assert not marker.exists()


def test_poisoned_or_incomplete_logged_model_is_a_model_error(fitted_detector, tmp_path):
    import mlflow

    from flows.tracking import PROJECT_DIR, load_model

    folder, marker = _poisoned_model(fitted_detector, tmp_path)
    saved = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(
        saved,
        python_model=str(PROJECT_DIR / "flows" / "pyfunc_entry.py"),
        artifacts={"detector": str(folder)},
        pip_requirements=["torch"],
    )
    with pytest.raises(ModelError, match=r"cannot be loaded: .*refused: the file holds pickled objects"):
        load_model(str(saved))
    assert not marker.exists()
    weights = next(saved.rglob("weights.pt"))
    weights.unlink()  # a model version whose artifacts are missing
    with pytest.raises(ModelError, match=r"cannot be loaded: model folder .* is incomplete: weights.pt is missing"):
        load_model(str(saved))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://user:secret@127.0.0.1:9", "http://***@127.0.0.1:9"),
        ("https://u:p@ss@host/api", "https://***@host/api"),
        ("reach http://alice:s3cr3t@mlflow.example:5000/x now", "reach http://***@mlflow.example:5000/x now"),
        ("http://host/api?token=abc&x=1", "http://host/api?token=***&x=1"),
        ("models:/vae@champion", "models:/vae@champion"),
        ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),
    ],
)
def test_redact_hides_credentials(text, expected):
    assert redact(text) == expected


def test_unreachable_tracking_server_fails_fast_with_code_4_and_no_credentials(tmp_path, session_home):
    src = tmp_path / "batch.csv"
    make_table(5)[0].to_csv(src, index=False)
    os.environ["MLFLOW_TRACKING_URI"] = "http://user:secret@127.0.0.1:9"
    try:
        t0 = time.monotonic()
        r = _run(
            ["-m", "flows.score", str(src), "--model", "models:/m@champion", "--out", str(tmp_path / "o")],
            session_home,
            tmp_path,
        )
        seconds = time.monotonic() - t0
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    assert r.returncode == 4, r.stderr
    assert seconds < 75
    errors = [line for line in r.stderr.splitlines() if line.startswith("python -m flows.score: error:")]
    assert errors == ["python -m flows.score: error: cannot reach the MLflow tracking server at http://***@127.0.0.1:9"]
    assert "secret" not in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
