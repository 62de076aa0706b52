"""Image fixtures: scikit-learn's 8x8 digits as PNG files, and one session-scoped trained image detector."""

from __future__ import annotations

from pathlib import Path

import pytest


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
    from pipeline.image_demo import make_digit_images

    return make_digit_images(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def image_detector(digit_files):
    """One conv VAE trained on the digit-0 PNGs (CPU, 1 thread, at most 40 epochs)."""
    from pipeline.image_detector import ImageVAEDetector
    from pipeline.images import read_training_images
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
