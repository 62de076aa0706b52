"""Training throughput: our trainer against PyOD's VAE at equal architecture and batch size.

    python -m benchmarks.training [--rows 200000] [--cols 21] [--epochs 3] [--batch-size 256] [--members 5]
                                  [--repeats 3] [--out FILE.json]

Ours trains an ensemble of ``--members`` VAEs (5: the detector's default) in one batched fit; PyOD trains
its single VAE. Both train the same MLP shape (PyOD's default encoder 128-64-32, latent 2, mirrored decoder) with
the same batch size for the same number of epochs on the same generated rows, in one process, with
the same torch thread count. Each first trains once untimed on a small slice (the first fit in a
process pays for torch's one-time set-up, which would otherwise fall on whichever runs first), then
the timed fits alternate, ours then PyOD's, ``--repeats`` times; each side's figure is the median.
samples/s = rows x epochs / fit seconds, counted over every member for ours (member-samples/s). Our fit
time includes its per-epoch validation pass (10%
extra rows); PyOD's includes its final pass over the training rows (``decision_scores_``). The JSON
holds ``ours_samples_per_s, pyod_samples_per_s, ratio`` (of the medians) and every timed run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

HIDDEN = (128, 64, 32)
LATENT = 2


def make_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    """(n, d) float32 rows from a 4-component Gaussian mixture with correlated features."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(4, d))
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    comp = rng.integers(0, 4, size=n)
    return (centers[comp] + rng.normal(size=(n, d)) @ mix).astype(np.float32)


def ours(x: np.ndarray, epochs: int, batch_size: int, device: str, members: int) -> dict[str, Any]:
    import torch

    from vae.config import ModelConfig, TrainConfig
    from vae.elbo import TABULAR
    from vae.model import TabularBatch, TabularVAE
    from vae.trainer import fit_members

    n_val = max(len(x) // 10, 1)
    xt = torch.from_numpy((x - x.mean(0)) / x.std(0))
    pool = TabularBatch(xt, torch.ones_like(xt), torch.zeros(len(x), 0, dtype=torch.long))
    config = ModelConfig(n_numeric=x.shape[1], hidden=HIDDEN, latent_dim=LATENT)
    models = [TabularVAE(config) for _ in range(members)]
    cfg = TrainConfig(
        max_epochs=epochs,
        batch_size=batch_size,
        patience=epochs + 1,
        min_epochs=0,
        kl_warmup_epochs=0,
        device=device,
        cpu_threads=None,
    )
    rows, val = [torch.arange(len(x))] * members, [torch.arange(n_val)] * members
    t0 = time.perf_counter()
    h = fit_members(models, TABULAR, pool, rows, val, cfg.plan(len(x)), list(range(members)))
    seconds = time.perf_counter() - t0
    samples = len(x) * sum(len(m.train_loss) for m in h)
    return {"seconds": seconds, "samples_per_s": samples / seconds, "device": h[0].device}


def pyod(x: np.ndarray, epochs: int, batch_size: int, device: str) -> dict[str, Any]:
    from pyod.models.vae import VAE

    model = VAE(
        epoch_num=epochs,
        batch_size=batch_size,
        encoder_neuron_list=list(HIDDEN),
        decoder_neuron_list=list(reversed(HIDDEN)),
        latent_dim=LATENT,
        verbose=0,
        device=None if device == "auto" else device,
    )
    t0 = time.perf_counter()
    model.fit(x)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "samples_per_s": len(x) * epochs / seconds}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median samples/s (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r["samples_per_s"])[(len(runs) - 1) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--cols", type=int, default=21)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--members", type=int, default=5, help="VAEs in our ensemble (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="timed fits of each, alternating (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for both (default 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/training.json"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    x = make_rows(args.rows, args.cols)
    warm = x[: min(len(x), 20_000)]
    ours(warm, 1, args.batch_size, args.device, args.members)
    pyod(warm, 1, args.batch_size, args.device)
    runs_a, runs_b = [], []
    for r in range(args.repeats):
        runs_a.append(ours(x, args.epochs, args.batch_size, args.device, args.members))
        runs_b.append(pyod(x, args.epochs, args.batch_size, args.device))
        print(
            f"run {r + 1}/{args.repeats}: ours {runs_a[-1]['samples_per_s']:,.0f} samples/s, "
            f"pyod {runs_b[-1]['samples_per_s']:,.0f} samples/s",
            flush=True,
        )
    a, b = _median_run(runs_a), _median_run(runs_b)
    result = {
        "rows": args.rows,
        "cols": args.cols,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "members": args.members,
        "repeats": args.repeats,
        "architecture": {"hidden": HIDDEN, "latent": LATENT},
        "threads": torch.get_num_threads(),
        "device": a["device"],
        "ours_seconds": round(a["seconds"], 3),
        "pyod_seconds": round(b["seconds"], 3),
        "ours_samples_per_s": round(a["samples_per_s"]),
        "pyod_samples_per_s": round(b["samples_per_s"]),
        "ratio": round(a["samples_per_s"] / b["samples_per_s"], 2),
        "ours_runs_samples_per_s": [round(r["samples_per_s"]) for r in runs_a],
        "pyod_runs_samples_per_s": [round(r["samples_per_s"]) for r in runs_b],
        "command": "python -m benchmarks.training " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
