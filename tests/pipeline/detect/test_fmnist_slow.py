"""Quality floor on real data (Fashion-MNIST, one-vs-rest); skipped when ../shared/data/images is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.images import DATA_ENV, DEFAULT_DATA_DIR, load_dataset

DATA = Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


@pytest.mark.slow
@pytest.mark.skipif(
    not (DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file(), reason=f"Fashion-MNIST not found in {DATA}"
)
def test_fashion_mnist_trouser_vs_rest_quality_floor():
    from sklearn.metrics import roc_auc_score

    from pipeline.detect.image_detector import ImageVAEDetector
    from vae.config import ImageTrainConfig

    x_train, x_test, y = load_dataset("fashion-mnist", DATA)[1]
    det = ImageVAEDetector(alpha=0.05, train_config=ImageTrainConfig(max_epochs=10, device="cpu"))
    det.fit(x_train[:2000])
    assert roc_auc_score(y, det.score_samples(x_test)) > 0.95
