"""Security: formula cells in reports, weights that would run code, credentials in the tracking URI."""

import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from flows.settings import redact
from pipeline.detect.detector import VAEAnomalyDetector
from pipeline.errors import ModelError
from pipeline.score.scoring import score_file
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


def _registered_poisoned_model(det, tmp: Path, name: str) -> tuple[str, Path]:
    """A poisoned detector logged and registered in the session store (inside its artifact root)."""
    import mlflow

    from flows import tracking
    from flows.tracking import PROJECT_DIR

    folder, marker = _poisoned_model(det, tmp)
    tracking.setup("security-tests")
    with mlflow.start_run():
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PROJECT_DIR / "flows" / "pyfunc_entry.py"),
            artifacts={"detector": str(folder)},
            pip_requirements=["torch"],
            registered_model_name=name,
        )
    return f"models:/{name}/1", marker


def test_poisoned_or_incomplete_logged_model_is_a_model_error(fitted_detector, tmp_path):
    from flows.settings import artifact_root
    from flows.tracking import load_model

    uri, marker = _registered_poisoned_model(fitted_detector, tmp_path, "poisoned")
    with pytest.raises(ModelError, match=r"cannot be loaded: .*refused: the file holds pickled objects"):
        load_model(uri)
    assert not marker.exists()
    [weights] = [p for p in artifact_root().rglob("weights.pt") if "poisoned" in str(p)]
    weights.unlink()  # a model version whose artifacts are missing
    with pytest.raises(ModelError, match=r"cannot be loaded: model folder .* is incomplete: weights.pt is missing"):
        load_model(uri)


def _code_model(tmp: Path) -> tuple[Path, Path]:
    """A pyfunc-from-code folder whose loading creates a marker file: proof that its code ran."""
    import mlflow

    marker = tmp / "code-ran"
    code = tmp / "evil_model.py"
    code.write_text(
        "import pathlib\nimport mlflow\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "class M(mlflow.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input):\n        return model_input\n"
        "mlflow.models.set_model(M())\n"
    )
    folder = tmp / "evil"
    mlflow.pyfunc.save_model(folder, python_model=str(code), pip_requirements=[])
    marker.unlink(missing_ok=True)  # saving a model from code runs it once
    return folder, marker


def test_model_uris_outside_the_registry_are_refused_without_running_code(tmp_path):
    import mlflow

    from flows import tracking

    folder, marker = _code_model(tmp_path)
    tracking.setup("security-tests")
    with mlflow.start_run() as run:
        pass
    depth = "../" * 12
    for uri in (
        f"runs:/{run.info.run_id}/{depth}{str(folder).lstrip('/')}",
        str(folder),
        folder.as_uri(),
        "models:/m-0123456789abcdef",
        "models:/../x@champion",
        "models:/x/latest/../1",
    ):
        with pytest.raises(ModelError, match=r"is not a registry URI: expected models:/NAME@ALIAS or models:/NAME/"):
            tracking.load_model(uri)
    client = mlflow.MlflowClient()
    client.create_registered_model("outside")
    client.create_model_version("outside", source=str(folder))  # a version whose files lie outside the store
    with pytest.raises(ModelError, match=r"outside the store's artifact root .*: refused"):
        tracking.load_model("models:/outside/1")
    assert not marker.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["flows.score", "batch.csv"],
        ["flows.score", "images", "--kind", "image"],
        ["flows.explore", "samples"],
        ["flows.inbox", "--inbox", "inbox", "--outbox", "outbox", "--once"],
    ],
    ids=["score", "score-images", "explore", "inbox"],
)
def test_every_cli_refuses_a_model_uri_outside_the_registry_with_exit_3(command, session_home, tmp_path):
    folder, marker = _code_model(tmp_path)
    (tmp_path / "inbox").mkdir()
    (tmp_path / "images").mkdir()
    make_table(5)[0].to_csv(tmp_path / "batch.csv", index=False)
    r = _run(["-m", *command, "--model", f"runs:/0/{'../' * 12}{str(folder).lstrip('/')}"], session_home, tmp_path)
    assert r.returncode == 3, r.stderr
    errors = [line for line in r.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "is not a registry URI" in errors[0], r.stderr
    assert "Traceback" not in r.stderr and not marker.exists()


def test_inputs_that_would_share_a_report_are_refused_before_scoring(registered_model, session_home, tmp_path):
    df, _ = make_table(40, seed=3)
    for sub, rows in (("a", 40), ("b", 5)):
        (tmp_path / sub).mkdir()
        df.head(rows).to_csv(tmp_path / sub / "x.csv", index=False)
    out = tmp_path / "o"
    r = _run(
        ["-m", "flows.score", "a/x.csv", "b/x.csv", "--model", "models:/test-model@champion", "--out", "o"],
        session_home,
        tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert [line for line in r.stderr.splitlines() if ": error: " in line] == [
        "python -m flows.score: error: inputs a/x.csv and b/x.csv would both write the report o/x.anomalies.csv: "
        "score them into different --out folders, or rename one"
    ]
    assert not out.exists() or not any(out.iterdir())


def test_the_same_input_twice_is_refused_and_distinct_stems_each_get_a_report(tmp_path):
    from pipeline.errors import InputError
    from pipeline.inbox.discovery import expand_inputs

    a = tmp_path / "a.csv"
    a.write_text("x\n1\n")
    with pytest.raises(InputError, match=r"input .*a.csv is given twice"):
        expand_inputs([a, tmp_path / "." / "a.csv"], tmp_path / "o")
    b = tmp_path / "sub" / "b.csv"
    b.parent.mkdir()
    b.write_text("x\n1\n")
    assert expand_inputs([a, b], tmp_path / "o") == [(a, tmp_path / "o"), (b, tmp_path / "o")]


def test_formula_column_names_are_neutralised_in_the_report_header(fitted_detector, tmp_path):
    from pipeline.score.report import csv_header

    df, _ = make_table(6, seed=7)
    name = "=cmd|' /C calc'!A0"
    det = VAEAnomalyDetector.load(fitted_detector.save(tmp_path / "m"))
    det.schema_ = dataclasses.replace(det.schema_, id_columns=(name,))
    src = tmp_path / "ids.csv"
    df.rename(columns={"id": name}).to_csv(src, index=False)
    s = score_file(det, src, tmp_path / "out")
    header = Path(s.report).read_text().splitlines()[0]
    assert header.split(",")[:2] == ["row", "'=cmd|' /C calc'!A0"]
    assert csv_header(["+1+1", "-x", "@a", "-12.5"]) == "'+1+1,'-x,'@a,-12.5\n"


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
    t0 = time.monotonic()
    r = _run(
        ["-m", "flows.score", str(src), "--model", "models:/m@champion", "--out", str(tmp_path / "o")],
        session_home,
        tmp_path,
        MLFLOW_TRACKING_URI="http://user:secret@127.0.0.1:9",
    )
    seconds = time.monotonic() - t0
    assert r.returncode == 4, r.stderr
    assert seconds < 75
    errors = [line for line in r.stderr.splitlines() if line.startswith("python -m flows.score: error:")]
    assert errors == ["python -m flows.score: error: cannot reach the MLflow tracking server at http://***@127.0.0.1:9"]
    assert "secret" not in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("name", ["a/b", "x@y", "..", "."])
def test_a_model_name_that_no_registry_uri_could_load_back_is_refused_at_training(name):
    from pydantic import ValidationError

    from flows.config import TrainConfig

    for data in ("x.csv", "images/"):
        with pytest.raises(ValidationError, match=r"model_name\n  String should match pattern"):
            TrainConfig(data=data, model_name=name)
    assert TrainConfig(data="x.csv", model_name="fraud-v1.2").model_name == "fraud-v1.2"
