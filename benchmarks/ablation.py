"""Ablation of the VAE detector's settings on the tabular benchmark (our method only).

    python -m benchmarks.ablation [--variants NAME ...] [--datasets NAME ...] [--seeds N] [--out FILE.csv]

Same protocol and splits as ``benchmarks.tabular``; each variant is a set of
``VAEAnomalyDetector`` keyword arguments (``VARIANTS``; a ``train`` entry holds ``TrainConfig``
fields, seeded per run). ``base`` is the current default, ``old`` the default before issue 3;
variants listed before issue 3's beta = 0.2 default trained with beta = 1 (their numbers in
BENCHMARKS.md were measured then), so rerunning them now trains them with beta = 0.2; those without
``density_space`` now also get the hidden-layer density terms (``latent`` is the default before them),
and variants that do not set ``n_models`` / ``cross_fit`` get the cross-fitted 5 VAEs (``shared3`` is the
default before them). ``b02`` is the default before the KL weight was chosen by latent collapse (beta = 0.2
always); variants that set ``beta`` train at that weight alone, the rest get the chosen weight.
Prints mean AUROC per variant and writes
one CSV row per variant x dataset x seed. Used to choose the default and recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.protocol import add_protocol_arguments, run_datasets, split

# cosine-decayed lr from 3e-3 over the whole budget, no early stop, best validation snapshot after 50 epochs
_COS: dict[str, Any] = {"lr": 3e-3, "lr_schedule": "cosine", "min_epochs": 50, "patience": 100000}

# KL warm-up over 20 epochs, no early stop before epoch 20
_KW: dict[str, Any] = {"kl_warmup_epochs": 20, "min_epochs": 20}

# the latent density term (distance between posterior means), the default before the hidden-layer terms
_LAT: dict[str, Any] = {"density_space": "latent", "cosine_weight": 0.0}

# the score before the conditional and centred terms (the -ELBO, raw and unit-length hidden distances),
# with the ensemble of that time (3 VAEs sharing one validation block)
_PREV: dict[str, Any] = {
    "conditional_groups": 0,
    "latent_weight": 1.0,
    "centred_weight": 0.0,
    "n_models": 3,
    "cross_fit": False,
}

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},  # the current defaults
    "latent": {**_LAT, **_PREV},  # the default before the hidden-layer terms
    "prev": {**_PREV},  # the default before the conditional and centred terms: -ELBO, raw + unit distances
    "no-cond": {"conditional_groups": 0},  # the current default without the conditional term
    "no-centred": {"centred_weight": 0.0, "latent_weight": 1.0},  # ... with the raw distance for the centred
    "shared3": {"n_models": 3, "cross_fit": False},  # the default before cross-fitting: 3 VAEs, one validation block
    "cf3": {"n_models": 3},  # cross-fitted, 3 VAEs
    "ens10": {"n_models": 10},  # cross-fitted, 10 VAEs (two per block)
    "p100": {"train": {"patience": 100}},
    "minep100": {"train": {"min_epochs": 100}},
    "vtrim05": {"train": {"val_trim": 0.05}},  # early stopping on the trimmed validation -ELBO
    "vtrim10": {"train": {"val_trim": 0.1}},
    "vtrim20": {"train": {"val_trim": 0.2}},
    "quantile": {"scaling": "quantile"},  # Gaussian-rank inputs
    "hid-raw2": {**_PREV, "cosine_weight": 0.0, "latent_weight": 2.0},  # hidden layer, raw distance only
    "hid-unit2": {**_PREV, "latent_weight": 0.0, "cosine_weight": 2.0},  # hidden layer, unit-length only
    "b02": {"kl_weights": (0.2,)},  # the default before the KL weight was chosen by collapse
    "beta1": {"train": {"beta": 1.0}},  # the default before beta = 0.2
    "b01": {"train": {"beta": 0.1}},
    "fb05": {"train": {"beta": 1.0, "free_bits": 0.5}},  # free bits instead of beta < 1
    "lat1": {"latent_k": 1, **_LAT},  # + latent k-NN density term (pipeline/detect/density.py)
    "lat1-w05": {"latent_k": 1, "latent_weight": 0.5, **_LAT},
    "b1-lat1": {"latent_k": 1, **_LAT, "train": {"beta": 1.0}},
    "b1-lat1-w05": {"latent_k": 1, "latent_weight": 0.5, **_LAT, "train": {"beta": 1.0}},
    "b1-lat1-w2": {"latent_k": 1, "latent_weight": 2.0, **_LAT, "train": {"beta": 1.0}},
    "b1-lat5": {"latent_k": 5, **_LAT, "train": {"beta": 1.0}},
    "old": {"n_models": 1, "train": {"kl_warmup_epochs": 0, "min_epochs": 0, "beta": 1.0}},  # before issue 3
    "iwae": {"score_method": "iwae"},
    "recon": {"score_method": "recon"},
    "logvar-4": {"min_log_var": -4.0},
    "logvar-2": {"min_log_var": -2.0},
    "ens5": {"n_models": 5},
    "logvar0": {"min_log_var": 0.0},
    "minep50": {"train": {"min_epochs": 50}},
    "cos3e3": {"train": {"lr": 3e-3, "lr_schedule": "cosine", "min_epochs": 50}},
    "klwarm": {"train": {"kl_warmup_epochs": 20, "min_epochs": 20}},
    "fixed200": {"train": {"min_epochs": 200}},
    "mp50-lv0": {"min_log_var": 0.0, "train": {"min_epochs": 50}},
    "mp50-lv-1": {"min_log_var": -1.0, "train": {"min_epochs": 50}},
    "mp50-t": {"likelihood": "student_t", "train": {"min_epochs": 50}},
    "mp50-lap": {"likelihood": "laplace", "train": {"min_epochs": 50}},
    "mp50-q": {"scaling": "quantile", "train": {"min_epochs": 50}},
    "mp50-t-lv0": {"likelihood": "student_t", "min_log_var": 0.0, "train": {"min_epochs": 50}},
    "kw-e400": {"train": {**_KW, "max_epochs": 400}},
    "kw-ens3": {"n_models": 3, "train": {**_KW}},
    "kw-mp50": {"train": {**_KW, "min_epochs": 50}},
    "kw-lv-2": {"min_log_var": -2.0, "train": {**_KW}},
    "kw-p50": {"train": {**_KW, "patience": 50, "max_epochs": 300}},
    "kw-b05": {"train": {**_KW, "beta": 0.5}},
    "kw-iwae": {"score_method": "iwae", "train": {**_KW}},
    "kw-recon": {"score_method": "recon", "train": {**_KW}},
    "c3": {"min_log_var": -1.0, "train": {**_COS}},
    "c3-kl": {"min_log_var": -1.0, "train": {**_COS, "kl_warmup_epochs": 20}},
    "c3-lv-2": {"min_log_var": -2.0, "train": {**_COS}},
    "c3-e400": {"min_log_var": -1.0, "train": {**_COS, "max_epochs": 400}},
    "c3-s10k": {"min_log_var": -1.0, "train": {**_COS, "max_epochs": None, "max_steps": 10000}},
}
"""Each variant: VAEAnomalyDetector keyword arguments; ``train`` holds TrainConfig fields (seeded per run)."""


def run_variant(
    name: str, kwargs: dict[str, Any], x: np.ndarray, y: np.ndarray, seed: int, alpha: float
) -> dict[str, Any]:
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from pipeline.detect.detector import VAEAnomalyDetector
    from vae.config import TrainConfig

    kwargs = dict(kwargs)
    if "beta" in kwargs.get("train", {}):  # a fixed KL weight, not the one chosen by collapse
        kwargs.setdefault("kl_weights", None)
    if "train" in kwargs:
        kwargs["train_config"] = TrainConfig(seed=seed, **kwargs.pop("train"))
    train_idx, test_idx, y_test = split(y, seed)
    cols = [f"x{j}" for j in range(x.shape[1])]
    t0 = time.perf_counter()
    det = VAEAnomalyDetector(alpha=alpha, seed=seed, **kwargs).fit(pd.DataFrame(x[train_idx], columns=cols))
    fit_s = time.perf_counter() - t0
    s = det.score_samples(pd.DataFrame(x[test_idx], columns=cols))
    flagged = s > det.threshold_
    return {
        "variant": name,
        "seed": seed,
        "auroc": float(roc_auc_score(y_test, s)),
        "threshold_fpr": float(flagged[y_test == 0].mean()),
        "fit_s": fit_s,
        "epochs": len(det.history_.train_loss),
        "best_epoch": det.history_.best_epoch,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--datasets", nargs="*", default=None)
    add_protocol_arguments(p, Path("benchmarks/results/ablation.csv"))
    args = p.parse_args(argv)

    def trials(x: np.ndarray, y: np.ndarray) -> Iterator[dict[str, Any]]:
        for name in args.variants:
            for seed in range(args.seeds):
                yield run_variant(name, VARIANTS[name], x, y, seed, args.alpha)

    df = run_datasets(
        args,
        trials,
        lambda r: (
            f"{r['dataset']:12s} {r['variant']:10s} seed={r['seed']} auroc={r['auroc']:.4f} "
            f"fpr={r['threshold_fpr']:.3f} fit={r['fit_s']:.1f}s epochs={r['epochs']} best={r['best_epoch']}"
        ),
    )
    table = df.groupby(["dataset", "variant"])["auroc"].mean().unstack("variant")[args.variants]
    print(table.round(4).to_string())
    print("mean AUROC:", table.mean().round(4).to_dict())
    print("mean fit_s:", df.groupby("variant")["fit_s"].mean().round(2).to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
