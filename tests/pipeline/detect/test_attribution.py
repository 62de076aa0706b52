"""Per-feature attribution: the top feature is the one the anomaly was injected into."""

import numpy as np
import pandas as pd
import pytest

from pipeline.detect.attribution import attribution_columns
from pipeline.detect.detector import VAEAnomalyDetector
from vae.config import TrainConfig

FEATURES = ["f0", "f1", "f2", "f3", "f4", "f5"]


def _rows(n: int, rng: np.random.Generator) -> pd.DataFrame:
    z = rng.normal(size=(n, 2))
    x = np.c_[z[:, 0], z[:, 0] + z[:, 1], z[:, 1], 2 * z[:, 0] - z[:, 1], rng.normal(size=n), rng.normal(size=n)]
    df = pd.DataFrame(x + 0.1 * rng.normal(size=x.shape), columns=FEATURES)
    df["kind"] = np.where(z[:, 0] > 0, "up", "down")
    return df


@pytest.fixture(scope="module")
def detector() -> VAEAnomalyDetector:
    rng = np.random.default_rng(0)
    # the default ensemble of 3: one VAE alone ranked the injected feature first for 89% to 98% of the rows
    # depending on its seed and device; the default's 3 gave 98% to 100% on seeds 0-3
    return VAEAnomalyDetector(alpha=0.05, train_config=TrainConfig(max_epochs=80)).fit(_rows(2000, rng))


def test_top_feature_is_the_injected_one_for_at_least_90_percent_of_rows(detector):
    rng = np.random.default_rng(1)
    df = _rows(300, rng)
    injected = rng.integers(0, len(FEATURES), size=len(df))
    for i, j in enumerate(injected):
        df.iloc[i, j] += rng.choice([-1, 1]) * rng.uniform(6, 10)
    cols = attribution_columns(detector, df, detector.explain_validated(detector.schema_.validate(df)))
    top1 = cols["top_features"].str.split(":").str[0]
    hit = (top1.to_numpy() == np.array(FEATURES)[injected]).mean()
    assert hit >= 0.9, hit


def test_attribution_format_observed_and_expected(detector):
    rng = np.random.default_rng(2)
    df = _rows(5, rng)
    df.loc[0, "f2"] = 25.0
    df.loc[1, "kind"] = "sideways"  # a category never seen in training
    cols = attribution_columns(detector, df, detector.explain_validated(detector.schema_.validate(df)))
    first = cols.iloc[0]
    assert first["top_features"].startswith("f2:") and first["top_observed"] == "25"
    assert abs(float(first["top_expected"])) < 5  # the model expects a value near the normal range
    shares = [int(part.split(":")[1].rstrip("%")) for part in first["top_features"].split(";")]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 101
    second = cols.iloc[1]
    assert second["top_features"].startswith("kind:") and second["top_observed"] == "sideways"
    assert second["top_expected"] in {"up", "down"}
