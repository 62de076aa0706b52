"""Writing a tabular benchmark's results: the CSV and text files, atomically, and the markdown summary."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = [
    "dataset",
    "seed",
    "method",
    "n_train",
    "n_test_normal",
    "n_test_anomaly",
    "auroc",
    "auprc",
    "threshold_fpr",
    "threshold_recall",
    "fit_s",
    "score_s",
    "calibration",
    "note",
]
METRIC_COLUMNS = ["auroc", "auprc", "threshold_fpr", "threshold_recall", "fit_s", "score_s"]


def write_csv_atomic(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _tmp_path(path: Path) -> Path:
    """A temporary name next to ``path`` (same file system, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float | np.floating):
        return "n/a" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    align = ["---" if i == 0 else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(fmt(v, digits) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(rows: list[dict[str, Any]], methods: Sequence[str], meta: dict[str, Any]) -> str:
    """Mean AUROC per method, per-dataset AUROC, threshold behaviour and time, as markdown."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty:
        return "(no results)\n"
    for c in METRIC_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    methods = [m for m in methods if m in set(df["method"])]
    datasets = list(dict.fromkeys(df["dataset"]))
    by_ds = df.groupby(["dataset", "method"])[METRIC_COLUMNS].mean()  # mean over seeds (NaN skipped)

    def per_ds(col: str) -> pd.DataFrame:
        return by_ds[col].unstack("method").reindex(index=datasets, columns=methods)

    auroc, auprc = per_ds("auroc"), per_ds("auprc")
    fpr, rec = per_ds("threshold_fpr"), per_ds("threshold_recall")
    n_seeds = df.groupby("method")["seed"].nunique()
    secs = df.groupby("method")[["fit_s", "score_s"]].sum()
    failed = df[df["auroc"].isna()]

    out = [
        f"Tabular benchmark, alpha={meta['alpha']}, seeds={meta['seeds']}, {len(datasets)} datasets, "
        f"{meta['torch_threads']} torch threads on {meta['cpu']} ({meta['cpu_count']} CPUs)"
        f"{', GPU ' + meta['gpu'] if meta.get('gpu') else ''}, {meta['date']}.",
        (f"Training pools capped at {meta['max_normal_train']} normal rows. " if meta.get("max_normal_train") else "")
        + f"vae-anomaly calibration: {meta.get('calibration', 'auto')}.",
        "Means are over datasets of the per-dataset mean over seeds; n/a = no result.",
        "",
        "### Mean AUROC per method",
        "",
        md_table(
            ["method", "mean AUROC", "mean AUPRC", "datasets", "seeds"],
            [
                [m, float(auroc[m].mean()), float(auprc[m].mean()), int(auroc[m].notna().sum()), int(n_seeds.get(m, 0))]
                for m in methods
            ],
        ),
        "",
        "### Mean AUROC per dataset",
        "",
        md_table(["dataset", *methods], [[d, *(float(auroc.loc[d, m]) for m in methods)] for d in datasets]),
        "",
        f"### Threshold behaviour (target false-positive rate alpha={meta['alpha']})",
        "",
        md_table(
            ["method", "mean threshold_fpr", "mean threshold_recall"],
            [[m, float(fpr[m].mean()), float(rec[m].mean())] for m in methods],
        ),
        "",
        "### Time (wall seconds summed over all datasets and seeds)",
        "",
        md_table(
            ["method", "fit_s", "score_s"],
            [[m, float(secs.loc[m, "fit_s"]), float(secs.loc[m, "score_s"])] for m in methods],
            digits=1,
        ),
        "",
    ]
    if len(failed):
        out += [
            "### Rows without a result",
            "",
            md_table(
                ["dataset", "seed", "method", "note"], failed[["dataset", "seed", "method", "note"]].to_numpy().tolist()
            ),
            "",
        ]
    return "\n".join(out)
