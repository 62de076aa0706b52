"""The MLflow pyfunc: a thin adapter over the same scoring code the CLI uses.

``mlflow.pyfunc.load_model("models:/vae-anomaly@champion").predict(df)`` returns a frame with
``score``, ``threshold`` and ``is_anomaly`` (0/1), one row per input row, in order. An image model
takes a frame with a ``path`` column of image files and adds an ``error`` column (see pipeline.image_scoring).
This module imports mlflow and pipeline only (no prefect), so a model server can load it.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd

from pipeline.detector import VAEAnomalyDetector
from pipeline.image_detector import ImageVAEDetector, is_image_model_dir
from pipeline.image_scoring import score_image_paths
from pipeline.scoring import score_features

DETECTOR_ARTIFACT = "detector"


class VAEAnomalyModel(mlflow.pyfunc.PythonModel):
    """Loads the saved detector folder; predict returns scores and flags."""

    def load_context(self, context: Any) -> None:
        path = context.artifacts[DETECTOR_ARTIFACT]
        if is_image_model_dir(path):  # an image model: predict takes a ``path`` column of image files
            self.detector = ImageVAEDetector.load(path)
            return
        self.detector = VAEAnomalyDetector.load(path)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        # MLflow accepts a pd.DataFrame hint without inferring a schema from it: the logged signature rules.
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        det = self.detector
        if getattr(det, "kind", "table") == "image":
            return score_image_paths(det, df)
        scores = score_features(det, det.schema_.validate(df, source="model input", require_ids=False), "model input")
        thr = det.threshold_
        return pd.DataFrame({"score": scores, "threshold": thr, "is_anomaly": (scores > thr).astype("int64")})
