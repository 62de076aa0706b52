"""Image demo data: scikit-learn's bundled 8x8 digits written as PNG files.

One digit is normal: most of its images go to ``train/``; the new batch ``new_batch/`` holds the rest
of them plus images of the other digits (the anomalies), in folders named by digit, and
``new_batch_labels.csv`` says which is which (1 = anomaly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.score.report import write_csv_atomic


@dataclass(frozen=True)
class ImageDemoFiles:
    train: Path
    new_batch: Path
    labels: Path


def _write_png(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def make_digit_images(
    out_dir: str | Path, normal_digit: int = 0, per_anomaly_digit: int = 10, n_new_normal: int = 40, seed: int = 7
) -> ImageDemoFiles:
    """Write the demo's PNGs into ``out_dir``: ``train/``, ``new_batch/<digit>/`` and the labels CSV.

    Args:
        normal_digit: the digit that is normal (about 180 images: ``n_new_normal`` go to the new batch).
        per_anomaly_digit: images of each other digit in the new batch.
    """
    from sklearn.datasets import load_digits

    if not 0 <= normal_digit <= 9:
        raise ValueError(f"normal_digit must be in 0..9, got {normal_digit!r}")
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0))  # 0..16 -> 0..255, ink bright on black
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    files = ImageDemoFiles(out / "train", out / "new_batch", out / "new_batch_labels.csv")
    normal = rng.permutation(np.flatnonzero(digits.target == normal_digit))
    new_normal, train = normal[:n_new_normal], normal[n_new_normal:]
    for i in train:
        _write_png(pixels[i], files.train / f"{normal_digit}_{i:04d}.png")
    rows = []
    for i in new_normal:
        rows.append((f"{normal_digit}/{i:04d}.png", 0))
    for d in range(10):
        if d != normal_digit:
            for i in rng.permutation(np.flatnonzero(digits.target == d))[:per_anomaly_digit]:
                rows.append((f"{d}/{i:04d}.png", 1))
    for rel, _ in rows:
        _write_png(pixels[int(rel.split("/")[1][:4])], files.new_batch / rel)
    write_csv_atomic(pd.DataFrame(rows, columns=["path", "is_anomaly"]), files.labels)
    return files


def write_all_digits(out_dir: str | Path) -> Path:
    """Write all 1,797 of scikit-learn's 8x8 digits as ``<out_dir>/<digit>/<index>.png``; returns ``out_dir``.

    Enough images, of every digit, for a VAE whose samples, reconstructions, interpolations and latent
    space show what the model learnt (the explore demo).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0))
    out = Path(out_dir)
    for i, (image, digit) in enumerate(zip(pixels, digits.target, strict=True)):
        _write_png(image, out / str(int(digit)) / f"{i:04d}.png")
    return out
