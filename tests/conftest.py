"""Shared fixtures: seeded synthetic tables, one trained detector, one registered model.

The embedded MLflow store and Prefect state of the whole session live in a temporary folder
(VAE_ANOMALY_HOME), never in the project.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="vae-anomaly-tests-"))


def pytest_configure(config: pytest.Config) -> None:
    # Before flows (and so prefect/mlflow) is imported by any test module.
    os.environ["VAE_ANOMALY_HOME"] = str(_SESSION_HOME)
    os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


def make_table(n: int, seed: int = 0, anomalies: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A mixed-type table: 4 correlated numeric columns, 2 categorical, an id; some injected anomalies.

    Returns the frame and the 0/1 labels (1 = injected anomaly).
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    a = z[:, 0] * 2.0 + 10.0 + 0.1 * rng.normal(size=n)
    b = z[:, 0] - z[:, 1] + 0.1 * rng.normal(size=n)
    c = np.exp(0.3 * z[:, 1]) + 0.05 * rng.normal(size=n)
    d = rng.integers(0, 5, size=n).astype(float)
    color = np.where(z[:, 0] > 0, "red", "blue")
    shape = rng.choice(["circle", "square", "star"], size=n, p=[0.5, 0.3, 0.2])
    df = pd.DataFrame(
        {"id": [f"r{i:05d}" for i in range(n)], "a": a, "b": b, "c": c, "d": d, "color": color, "shape": shape}
    )
    y = np.zeros(n, dtype=int)
    if anomalies:
        idx = rng.choice(n, size=anomalies, replace=False)
        y[idx] = 1
        half = len(idx) // 2
        df.loc[idx[:half], "b"] += rng.choice([-1, 1], size=half) * rng.uniform(3, 5, size=half)  # break a~b
        df.loc[idx[half:], "color"] = np.where(df.loc[idx[half:], "color"] == "red", "blue", "red")  # flip
        df.loc[idx[half:], "a"] += np.where(df.loc[idx[half:], "color"] == "red", -2.0, 2.0)
    return df, y


@pytest.fixture(scope="session")
def train_table() -> pd.DataFrame:
    return make_table(1500, seed=1)[0]


@pytest.fixture(scope="session")
def test_table() -> tuple[pd.DataFrame, np.ndarray]:
    return make_table(600, seed=2, anomalies=60)


@pytest.fixture(scope="session")
def fitted_detector(train_table: pd.DataFrame):
    from pipeline.detect.detector import VAEAnomalyDetector
    from vae.config import TrainConfig

    det = VAEAnomalyDetector(alpha=0.05, id_columns=["id"], train_config=TrainConfig(max_epochs=60, seed=0))
    return det.fit(train_table)


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def train_csv(train_table: pd.DataFrame, session_home: Path) -> Path:
    p = session_home / "data" / "train.csv"
    p.parent.mkdir(parents=True, exist_ok=True)
    train_table.to_csv(p, index=False)
    return p


@pytest.fixture(scope="session")
def registered_model(prefect_harness: None, train_csv: Path) -> dict:
    """Train + register once through the real train flow (SQLite MLflow in the session folder)."""
    from flows.config import TrainConfig
    from flows.train_flow import train

    return train(TrainConfig(data=train_csv, model_name="test-model", id_columns=["id"], alpha=0.05, max_epochs=40))


@pytest.fixture
def box(tmp_path: Path) -> dict[str, Path]:
    d = {k: tmp_path / k for k in ("inbox", "outbox")}
    for p in d.values():
        p.mkdir()
    d["quarantine"] = d["outbox"] / "quarantine"
    return d


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One torch thread, as the trainer's default: the test machine is shared (../shared/NOTES-torch-pyod.md)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digit_files(tmp_path_factory: pytest.TempPathFactory):
    """Digit 0 is normal: ``train/`` (138 PNGs), ``new_batch/<digit>/`` (40 zeros + 10 of each other digit)."""
    from pipeline.data.image_demo import make_digit_images

    return make_digit_images(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def image_detector(digit_files):
    """One conv VAE trained on the digit-0 PNGs (CPU, 1 thread, at most 40 epochs)."""
    from pipeline.data.images import read_training_images
    from pipeline.detect.image_detector import ImageVAEDetector
    from vae.config import ImageTrainConfig

    images = read_training_images(digit_files.train)
    det = ImageVAEDetector(alpha=0.05, train_config=ImageTrainConfig(max_epochs=40, device="cpu"))
    return det.fit(images.pixels)


def write_png(path: Path, pixels) -> Path:
    """Write a uint8 array (H, W) grey or (H, W, 3) RGB as an image file (format from the suffix)."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
    return path


def cli_env(home: Path, ephemeral: bool = False, **extra: str) -> dict[str, str]:
    """Environment of a CLI subprocess: the session's project home and one Prefect home for every CLI run (its
    database made once). While the session's Prefect test server runs, the CLI uses it (``PREFECT_API_URL``):
    no ephemeral API start-up of its own (about 8 s a run). ``ephemeral=True`` keeps the embedded default.

    MLflow URIs are not inherited: ``mlflow.set_tracking_uri`` / ``set_registry_uri`` in this process export
    MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, and a registry URI left over would win in ``mlflow models serve``.
    """
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env |= {"VAE_ANOMALY_HOME": str(home), "PREFECT_HOME": str(home / "prefect-cli"), **extra}
    env.pop("PREFECT_API_URL", None)
    url = PREFECT_API_URL.value()
    if url and not ephemeral:
        env["PREFECT_API_URL"] = str(url)
    return env
