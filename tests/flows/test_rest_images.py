"""The image pyfunc served over REST (MLflow's real scoring app, in-process): clients send image bytes.

A ``path`` column is read only under VAE_ANOMALY_IMAGE_ROOT, with one answer for a missing path and a refused
one; a cell that cannot be decoded is that row's error, with JSON ``null`` scores.
"""

from __future__ import annotations

import base64
import os
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np
import pandas as pd
import pytest

from pipeline.score.image_scoring import IMAGE_ROOT_ENV, score_images_batch
from tests.flows.test_rest import assert_one_sentence_400, save_pyfunc, serve, strict_json

__all__ = ["serve"]  # the module-scoped fixture, shared with the table tests


@pytest.fixture(scope="module")
def image_pyfunc(image_detector, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rest-images")
    return save_pyfunc(image_detector.save(tmp / "detector"), "image", tmp / "pyfunc")


@pytest.fixture(scope="module")
def image_client(image_pyfunc, serve):
    return serve(image_pyfunc)


@pytest.fixture(scope="module")
def some_files(digit_files):
    """Six normal and six anomalous digit PNGs of the new batch."""
    return (
        sorted((digit_files.new_batch / "0").glob("*.png"))[:6]
        + sorted((digit_files.new_batch / "3").glob("*.png"))[:6]
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def predictions(client, column: str, cells: list[str]) -> pd.DataFrame:
    """POST a one-column frame as JSON (pandas' split orientation); the predictions, parsed as strict JSON."""
    body = {"dataframe_split": {"columns": [column], "data": [[c] for c in cells]}}
    response = client.post("/invocations", json=body)
    assert response.status_code == 200, response.text[:300]
    return pd.DataFrame(strict_json(response.text)["predictions"])


def test_base64_images_score_as_the_cli_and_the_in_process_pyfunc(image_client, image_pyfunc, some_files, tmp_path):
    served = predictions(image_client, "image", [b64(f.read_bytes()) for f in some_files])
    local = image_pyfunc.predict(pd.DataFrame({"image": [f.read_bytes() for f in some_files]}))  # raw bytes too
    report = pd.read_csv(score_images_batch(image_pyfunc.unwrap_python_model().detector, some_files, tmp_path).report)
    assert served["error"].eq("").all() and np.array_equal(served["score"], local["score"])
    assert np.allclose(served["score"], report["score"], rtol=1e-6)
    assert served["is_anomaly"].tolist() == report["is_anomaly"].tolist() == local["is_anomaly"].tolist()


def test_undecodable_cells_are_row_errors_with_null_scores_and_http_200(image_client, some_files):
    good = b64(some_files[0].read_bytes())
    cells = [good, b64(b"not a png"), "%%% not base64 %%%", "", b64(some_files[0].read_bytes()[:40])]
    served = predictions(image_client, "image", cells)  # strict JSON: NaN would have failed to parse
    assert np.isfinite(served["score"].iloc[0]) and served["error"].iloc[0] == ""
    assert served["score"].iloc[1:].isna().all() and served["is_anomaly"].iloc[1:].isna().all()
    assert served["error"].tolist()[1:4] == [
        "cannot decode image: not a PNG, JPEG or BMP image",
        "'image' is not valid base64 (expected base64-encoded image bytes)",
        "'image' holds nothing, expected base64-encoded image bytes",
    ]
    assert served["error"].iloc[4].startswith("cannot decode image: ")  # a truncated PNG


def test_path_column_without_an_image_root_is_refused_with_one_sentence(image_client, tmp_path, monkeypatch):
    body = {"dataframe_split": {"columns": ["path"], "data": [["/etc/hostname"]]}}
    monkeypatch.delenv(IMAGE_ROOT_ENV, raising=False)
    response = image_client.post("/invocations", json=body)
    assert_one_sentence_400(response, "base64-encoded in an 'image' column", IMAGE_ROOT_ENV)
    monkeypatch.setenv(IMAGE_ROOT_ENV, str(tmp_path / "nowhere"))  # the operator's root is not a folder
    message = assert_one_sentence_400(image_client.post("/invocations", json=body))
    assert message == f"{IMAGE_ROOT_ENV} is not a folder: the server cannot read a 'path' column"
    body = {"dataframe_split": {"columns": ["file"], "data": [["x"]]}}
    message = assert_one_sentence_400(image_client.post("/invocations", json=body))
    assert message == "an image model takes a column 'image' of base64-encoded PNG/JPEG/BMP files, got columns ['file']"


def test_paths_under_the_root_score_and_every_other_path_gets_the_same_error(
    image_client, some_files, digit_files, tmp_path, monkeypatch
):
    monkeypatch.setenv(IMAGE_ROOT_ENV, str(digit_files.new_batch))
    outside = tmp_path / "outside.png"
    outside.write_bytes(some_files[0].read_bytes())  # a real image, outside the root
    link = digit_files.new_batch / "zz_link.png"
    link.symlink_to(outside)
    refused = [str(outside), "/etc/hostname", str(digit_files.new_batch / "0" / "missing.png"), "../outside.png"]
    try:
        served = predictions(image_client, "path", ["0/" + some_files[0].name, *refused, "zz_link.png"])
    finally:
        link.unlink()
    expected = predictions(image_client, "image", [b64(some_files[0].read_bytes())])
    assert served["score"].iloc[0] == expected["score"].iloc[0] and served["error"].iloc[0] == ""
    errors = [
        e.replace(repr(p), "<path>") for e, p in zip(served["error"].iloc[1:], [*refused, "zz_link.png"], strict=True)
    ]
    assert set(errors) == {"image <path> is not a readable file under the allowed root"}
    assert served["score"].iloc[1:].isna().all()


def test_a_fifo_under_the_root_is_refused_without_blocking(image_client, tmp_path, monkeypatch):
    monkeypatch.setenv(IMAGE_ROOT_ENV, str(tmp_path))
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(predictions, image_client, "path", [str(fifo)])
        try:
            served = answer.result(timeout=20)
        except FutureTimeout:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # unblock the reader, then fail
            pytest.fail("scoring a FIFO blocked")
    assert served["error"].tolist() == [f"image {str(fifo)!r} is not a readable file under the allowed root"]
