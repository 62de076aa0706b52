"""Image figures written to files (matplotlib Agg; plotly for the 3-D latent plot).

- contact sheet: the top-k most anomalous images, one row each: original | reconstruction | per-pixel error;
- a grid of images decoded from the prior, an interpolation strip, reconstructions of given images;
- the latent space: a 2-D PNG (the first two principal axes of the posterior means when latent_dim > 2)
  and, when latent_dim >= 3, an interactive 3-D HTML page (self-contained: plotly.js is inlined).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, img: np.ndarray) -> None:
    """Draw one (C, H, W) image in [0, 1] without axes."""
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(np.transpose(img, (1, 2, 0)), 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    _plt().close(fig)
    return p


def contact_sheet(
    originals: np.ndarray,
    recons: np.ndarray,
    errors: np.ndarray,
    scores: np.ndarray,
    names: Sequence[str],
    threshold: float,
    path: str | Path,
) -> Path:
    """PNG of the given (most anomalous) images: one row each, original | reconstruction | error heat map.

    Args:
        originals, recons: (k, C, H, W) in [0, 1].
        errors: (k, H, W) per-pixel negative log-likelihood (nats), one colour scale for the sheet.
        scores: (k,) anomaly scores; names: (k,) paths shown beside them.
    """
    plt = _plt()
    k = len(originals)
    fig, axes = plt.subplots(
        max(k, 1), 3, figsize=(6.0, 1.6 * max(k, 1) + 0.6), dpi=80, squeeze=False, layout="constrained"
    )
    vmax = float(np.quantile(errors, 0.995)) if k else 1.0
    for i in range(k):
        _show(axes[i, 0], originals[i])
        _show(axes[i, 1], recons[i])
        im = axes[i, 2].imshow(errors[i], cmap="inferno", vmin=0.0, vmax=max(vmax, 1e-9), interpolation="nearest")
        axes[i, 2].set_xticks([])
        axes[i, 2].set_yticks([])
        flag = " FLAGGED" if scores[i] > threshold else ""
        axes[i, 0].set_ylabel(f"#{i + 1} {short_name(names[i], 24)}\nscore {scores[i]:.4g}{flag}", fontsize=7)
    if k:
        axes[0, 0].set_title("original", fontsize=9)
        axes[0, 1].set_title("reconstruction", fontsize=9)
        axes[0, 2].set_title("excess error (nats / pixel)", fontsize=9)
        fig.colorbar(im, ax=axes[:, 2].tolist(), shrink=0.6)
    fig.suptitle(f"top {k} anomaly scores (threshold {threshold:.4g}; higher = more anomalous)", fontsize=9)
    return _save(fig, path)


def image_grid(
    images: np.ndarray, path: str | Path, title: str, ncols: int = 8, labels: Sequence[str] | None = None
) -> Path:
    """PNG of images (n, C, H, W) in [0, 1] on a grid with ``ncols`` columns."""
    plt = _plt()
    n = len(images)
    nrows = max(int(np.ceil(n / ncols)), 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 * ncols, 1.2 * nrows + 0.5), dpi=80, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            _show(ax, images[i])
            if labels is not None:
                ax.set_title(short_name(labels[i], 14), fontsize=6)
        else:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def reconstruction_pairs(
    originals: np.ndarray, recons: np.ndarray, scores: np.ndarray, names: Sequence[str], path: str | Path
) -> Path:
    """PNG with one column per image: original above, reconstruction below, score as the title."""
    plt = _plt()
    n = len(originals)
    fig, axes = plt.subplots(2, max(n, 1), figsize=(1.5 * max(n, 1) + 0.4, 3.4), dpi=80, squeeze=False)
    for i in range(n):
        _show(axes[0, i], originals[i])
        _show(axes[1, i], recons[i])
        axes[0, i].set_title(f"{short_name(names[i], 14)}\n{scores[i]:.4g}", fontsize=6)
    axes[0, 0].set_ylabel("original", fontsize=8)
    axes[1, 0].set_ylabel("reconstruction", fontsize=8)
    return _save(fig, path)


def short_name(name: str, width: int) -> str:
    """A path cut to ``width`` characters from the left by whole folders (``.../0/0020.png``), keeping the
    file name readable; a file name longer than ``width`` keeps its start and end."""
    name = str(name)
    if len(name) <= width:
        return name
    parts = name.split("/")
    kept = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + len(kept) + 5 > width:
            break
        kept = f"{part}/{kept}"
    if len(kept) + 4 <= width:
        return f".../{kept}"
    head = (width - 1) // 2
    return f"{kept[:head]}~{kept[-(width - head - 1) :]}"


def latent_projection(z: np.ndarray, dims: int) -> tuple[np.ndarray, str, list[str]]:
    """z (n, d) -> (n, min(dims, d)) coordinates: z itself when d <= dims, else its first principal axes;
    with what was projected and one label per axis (a principal axis says its own share of the variance)."""
    z = np.asarray(z, dtype=np.float64)
    if z.shape[1] <= dims:
        return z, "z", [f"z{i + 1}" for i in range(z.shape[1])]
    centred = z - z.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    shares = s**2 / max((s**2).sum(), 1e-12)
    labels = [f"principal axis {i + 1} of z ({shares[i]:.0%} of variance)" for i in range(dims)]
    return centred @ vt[:dims].T, f"PCA of z ({shares[:dims].sum():.0%} of variance)", labels


def latent_scatter_2d(z: np.ndarray, colour: np.ndarray, colour_name: str, path: str | Path) -> Path:
    """PNG scatter of posterior means (n, d) on 2 axes, coloured by label or flag."""
    plt = _plt()
    xy, how, axes = latent_projection(z, 2)
    if xy.shape[1] == 1:
        xy, axes = np.c_[xy, np.zeros(len(xy))], [*axes, "(z has one dimension)"]
    fig, ax = plt.subplots(figsize=(6, 5), dpi=90)
    for value in np.unique(colour):
        m = colour == value
        ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.7, label=f"{colour_name}={value}")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.legend(fontsize=7, markerscale=2)
    ax.set_title(f"latent space: posterior means mu(x), {how}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def latent_scatter_3d_html(
    z: np.ndarray, colour: np.ndarray, colour_name: str, names: Sequence[str], path: str | Path
) -> Path:
    """Interactive 3-D scatter (self-contained HTML) of posterior means (n, d >= 3), coloured by label or flag."""
    import plotly.graph_objects as go

    xyz, how, axes = latent_projection(z, 3)
    fig = go.Figure()
    for value in np.unique(colour):
        m = colour == value
        fig.add_trace(
            go.Scatter3d(
                x=xyz[m, 0],
                y=xyz[m, 1],
                z=xyz[m, 2],
                mode="markers",
                marker={"size": 2},
                name=f"{colour_name}={value}",
                text=[names[i] for i in np.flatnonzero(m)],
            )
        )
    fig.update_layout(
        title=f"latent space: posterior means mu(x), {how}",
        scene={f"{a}axis_title": t for a, t in zip("xyz", [*axes, "", "", ""], strict=False)},
    )
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(p), include_plotlyjs=True, full_html=True)
    return p
