"""The MLflow pyfunc: a thin adapter over the same scoring code the CLI uses.

``mlflow.pyfunc.load_model("models:/vae-anomaly@champion").predict(df)`` returns a frame with
``score``, ``threshold`` and ``is_anomaly`` (0/1), one row per input row, in order. An image model takes a
frame with a column ``image`` of base64-encoded PNG/JPEG/BMP files (a column ``path`` of files only when
``VAE_ANOMALY_IMAGE_ROOT`` names the folder they lie in) and adds an ``error`` column (see
pipeline.score.image_scoring.score_image_frame); where ``error`` is set, ``score`` and ``is_anomaly`` are None.

Served over REST (``mlflow models serve``), a bad request is HTTP 400 whose JSON body holds one sentence (ours),
never a traceback nor the request's data, and missing values are JSON ``null``. Scoring uses the CLI's torch
thread policy (pipeline.score.scoring.scoring_threads). This module imports mlflow and pipeline only (no prefect),
so a model server can load it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema

from pipeline.detect.detector import VAEAnomalyDetector
from pipeline.detect.image_detector import ImageVAEDetector, is_image_model_dir
from pipeline.errors import InputError, ModelError
from pipeline.score.image_scoring import IMAGE_ROOT_ENV, score_image_frame
from pipeline.score.scoring import scoring_threads
from pipeline.score.table_source import score_features

log = logging.getLogger(__name__)

DETECTOR_ARTIFACT = "detector"


def pyfunc_signature(kind: str = "table") -> ModelSignature:
    """The signature the pyfunc is logged with: its output columns, and no input schema.

    With an input schema MLflow checks and casts a request before predict runs, and answers a mismatch with
    a message that repeats the request's data (or, for a CSV cell it cannot cast, a traceback); without one,
    predict's own validation decides, with messages that name the column and the row.
    """
    image = kind == "image"  # an image that cannot be decoded has no score and no flag
    columns = [
        ColSpec("double", "score", required=not image),
        ColSpec("double", "threshold"),
        ColSpec("long", "is_anomaly", required=not image),
    ]
    if image:
        columns.append(ColSpec("string", "error"))
    return ModelSignature(outputs=Schema(columns))


class _SetOnce(MlflowException):
    """An MlflowException whose message cannot be changed once set.

    MLflow's scoring server (``invocations`` in mlflow.pyfunc.scoring_server) rewrites the message of an
    MlflowException raised by predict to ``Failed to predict data '<the request's data>' ...``; this class
    ignores that assignment, so the client gets our sentence alone.
    """

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


class PredictInputError(_SetOnce, InputError):
    """Bad model input (an InputError or SchemaError of our validation): HTTP 400 over REST."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class PredictModelError(_SetOnce, ModelError):
    """The model cannot score (a ModelError): HTTP 400 over REST, with our message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class PredictFailure(_SetOnce):
    """An unexpected error in predict: HTTP 500 over REST, one sentence; the traceback goes to the server log."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INTERNAL_ERROR)


def nulls_for_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each float column that has a missing value turned into an object column holding None there.

    MLflow's scoring server writes predictions with ``json.dump``, which writes a float NaN as ``NaN`` (not
    JSON: strict parsers refuse it) and None as ``null``. Columns without a missing value keep their dtype.
    """
    out = frame.copy()
    for name in out.columns:
        col = out[name]
        if pd.api.types.is_float_dtype(col.dtype) and col.isna().any():
            out[name] = pd.Series([None if pd.isna(v) else float(v) for v in col], index=col.index, dtype=object)
    return out


class VAEAnomalyModel(mlflow.pyfunc.PythonModel):
    """Loads the saved detector folder; predict returns scores and flags."""

    def load_context(self, context: Any) -> None:
        path = context.artifacts[DETECTOR_ARTIFACT]
        if is_image_model_dir(path):  # an image model: predict takes an ``image`` column of image files' bytes
            self.detector = ImageVAEDetector.load(path)
            return
        self.detector = VAEAnomalyDetector.load(path)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Scores of ``model_input``'s rows, on the CLI's torch threads; missing values are None.

        Raises:
            PredictInputError: bad input (also an InputError), message naming the column and row.
            PredictModelError: the model cannot score (also a ModelError).
            PredictFailure: anything else (logged here with its traceback).
        """
        try:
            # MLflow accepts a pd.DataFrame hint without inferring a schema from it: the logged signature rules.
            df = model_input if isinstance(model_input, pd.DataFrame) else _as_frame(model_input)
            with scoring_threads():
                return nulls_for_missing(self._score(df))
        except InputError as e:
            raise PredictInputError(str(e)) from e
        except ModelError as e:
            raise PredictModelError(str(e)) from e
        except Exception as e:
            log.exception("predict failed")
            raise PredictFailure(f"the model failed on this input ({type(e).__name__}): see the server log") from e

    def _score(self, df: pd.DataFrame) -> pd.DataFrame:
        det = self.detector
        if getattr(det, "kind", "table") == "image":
            return score_image_frame(det, df, os.environ.get(IMAGE_ROOT_ENV) or None)
        features = det.schema_.validate(df, source="model input", require_ids=False)
        scores, _ = score_features(det, features, "model input")
        thr = det.thresholds(df)
        return pd.DataFrame({"score": scores, "threshold": thr, "is_anomaly": (scores > thr).astype("int64")})


def _as_frame(model_input: Any) -> pd.DataFrame:
    """``model_input`` (a dict of columns, a list of records, an array) as a frame.

    Raises:
        InputError: pandas cannot make a table of it.
    """
    try:
        return pd.DataFrame(model_input)
    except (TypeError, ValueError) as e:
        raise InputError(f"model input cannot be read as a table: {e}") from None
