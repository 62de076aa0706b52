"""The pyfunc served over REST: MLflow's real scoring app (``mlflow models serve``), driven in-process.

Errors reach the client as one sentence (ours) in a small JSON body, never a traceback or the request's data;
predictions are strict JSON; predict runs on the CLI's torch threads.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from mlflow.pyfunc import scoring_server

from flows.pyfunc import DETECTOR_ARTIFACT, pyfunc_signature
from flows.tracking import PROJECT_DIR
from pipeline.score.scoring import model_threads
from tests.conftest import make_table

FEATURES = ["a", "b", "c", "d", "color", "shape"]


def strict_json(text: str) -> object:
    """``text`` parsed as strict JSON: NaN and Infinity are refused."""

    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def save_pyfunc(detector_dir: Path, kind: str, folder: Path) -> mlflow.pyfunc.PyFuncModel:
    """The pyfunc saved as the tracking code logs it (same entry point, artifact and signature), loaded back."""
    with warnings.catch_warnings():  # MLflow's advice on input examples
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            folder,
            python_model=str(PROJECT_DIR / "flows" / "pyfunc_entry.py"),
            artifacts={DETECTOR_ARTIFACT: str(detector_dir)},
            signature=pyfunc_signature(kind),
            pip_requirements=["torch"],
        )
    return mlflow.pyfunc.load_model(str(folder))


@pytest.fixture(scope="module")
def serve() -> Iterator[Callable[[mlflow.pyfunc.PyFuncModel], TestClient]]:
    """Makes MLflow's scoring app for a loaded pyfunc; undoes the serving flag its ``init`` sets in os.environ."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")
        yield lambda model: TestClient(scoring_server.init(model))


@pytest.fixture(scope="module")
def table_pyfunc(fitted_detector, tmp_path_factory) -> mlflow.pyfunc.PyFuncModel:
    tmp = tmp_path_factory.mktemp("rest-table")
    return save_pyfunc(fitted_detector.save(tmp / "detector"), "table", tmp / "pyfunc")


@pytest.fixture(scope="module")
def table_client(table_pyfunc, serve) -> TestClient:
    return serve(table_pyfunc)


def post_csv(client: TestClient, frame: pd.DataFrame):
    return client.post("/invocations", content=frame.to_csv(index=False), headers={"Content-Type": "text/csv"})


def assert_one_sentence_400(response, *expected: str) -> str:
    """The body is small JSON with one line of ours (holding every ``expected`` text), no traceback."""
    assert response.status_code == 400, response.text[:300]
    assert len(response.content) < 500 and "Traceback" not in response.text and "stack_trace" not in response.text
    message = strict_json(response.text)["message"]
    assert "\n" not in message and "Failed to predict" not in message
    for text in expected:
        assert text in message, message
    return message


@pytest.mark.parametrize(
    ("content_type", "cell", "expected"),
    [
        ("text/csv", "inf", "column 'a' must be finite, but row 2 holds inf"),
        ("application/json", "Infinity", "column 'a' must be finite, but row 2 holds inf"),
        ("text/csv", "x", "column 'a' must be numeric, but row 2 holds 'x'"),  # MLflow's CSV cast used to fail first
    ],
)
def test_bad_value_is_a_400_with_one_sentence_naming_column_and_row(table_client, content_type, cell, expected):
    df = make_table(4, seed=3)[0]
    rows = df[FEATURES].astype(object).to_numpy().tolist()
    if content_type == "text/csv":
        df = df.astype({"a": object})
        df.loc[2, "a"] = cell
        body = df.to_csv(index=False)
    else:
        rows[2][0] = "__cell__"
        body = json.dumps({"dataframe_split": {"columns": FEATURES, "data": rows}}).replace('"__cell__"', cell)
    response = table_client.post("/invocations", content=body, headers={"Content-Type": content_type})
    assert assert_one_sentence_400(response, expected).startswith("model input: ")


def test_missing_column_is_a_400_naming_it_without_the_data(table_client):
    df = make_table(4, seed=3)[0]
    response = post_csv(table_client, df.drop(columns=["b"]))
    assert_one_sentence_400(response, "missing column(s) ['b']")
    assert "r00000" not in response.text  # MLflow used to print the request's frame (ids, values) in the message


def test_served_scores_are_strict_json_and_equal_in_process_predict(table_pyfunc, table_client):
    df, _ = make_table(40, seed=4, anomalies=4)
    ints = df.assign(d=df["d"].astype("int64"))  # MLflow's input schema used to refuse int64 for a float column
    response = post_csv(table_client, ints)
    assert response.status_code == 200
    served = pd.DataFrame(strict_json(response.text)["predictions"])
    local = table_pyfunc.predict(ints)
    assert np.array_equal(local["score"].to_numpy(), table_pyfunc.predict(df)["score"].to_numpy())
    assert list(served.columns) == ["score", "threshold", "is_anomaly"]
    assert np.array_equal(served["score"].to_numpy(), local["score"].to_numpy())  # JSON carries the full float64
    assert served["is_anomaly"].tolist() == local["is_anomaly"].tolist() and local["is_anomaly"].dtype == "int64"


def test_unexpected_error_is_a_500_with_one_sentence_and_no_traceback(table_pyfunc, table_client, monkeypatch):
    def broken(features):
        raise RuntimeError("boom in /srv/secret/module.py")

    monkeypatch.setattr(table_pyfunc.unwrap_python_model().detector, "score_validated", broken)
    response = post_csv(table_client, make_table(4, seed=3)[0])
    assert response.status_code == 500 and len(response.content) < 500
    assert "Traceback" not in response.text and "/srv/secret" not in response.text
    assert strict_json(response.text)["message"] == "the model failed on this input (RuntimeError): see the server log"


def test_predict_scores_on_the_cli_thread_policy_and_restores_threads(table_pyfunc, monkeypatch):
    det = table_pyfunc.unwrap_python_model().detector
    seen, score = [], det.score_validated

    def recording(features):
        seen.append(torch.get_num_threads())
        return score(features)

    monkeypatch.setattr(det, "score_validated", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(model_threads() + 1)  # what MLflow's worker thread would otherwise keep (all cores)
    try:
        table_pyfunc.predict(make_table(8, seed=5)[0])
        assert seen == [model_threads()] and torch.get_num_threads() == model_threads() + 1
    finally:
        torch.set_num_threads(before)
