"""Demo data: card transactions with numeric and categorical columns, made from a seed.

The training table is normal traffic; the new batch mixes normal rows with injected
anomalies of five kinds, whose labels go to a separate file so the demo can measure AUROC.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES = {
    # category: (log-amount mean, log-amount sd, mean items, channel probabilities pos/online/atm)
    "grocery": (3.4, 0.5, 12.0, (0.85, 0.15, 0.0)),
    "restaurant": (3.3, 0.4, 3.0, (0.95, 0.05, 0.0)),
    "fuel": (3.9, 0.3, 1.0, (1.0, 0.0, 0.0)),
    "electronics": (5.3, 0.8, 1.5, (0.4, 0.6, 0.0)),
    "travel": (6.0, 0.7, 2.0, (0.1, 0.9, 0.0)),
    "cash": (4.6, 0.5, 1.0, (0.0, 0.0, 1.0)),
}
CHANNELS = ("pos", "online", "atm")
ANOMALY_KINDS = ("amount_spike", "impossible_channel", "far_foreign_night", "item_burst", "geo_mismatch")


@dataclass(frozen=True)
class DemoFiles:
    train: Path
    new_batch: Path
    labels: Path


def _normal_rows(rng: np.random.Generator, n: int) -> pd.DataFrame:
    cats = np.array(list(CATEGORIES))
    p_cat = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.15])
    category = rng.choice(cats, size=n, p=p_cat)
    customer_avg = np.exp(rng.normal(3.8, 0.5, size=n))
    log_amount, items, channel = np.empty(n), np.empty(n), np.empty(n, dtype=object)
    for c, (mu, sd, mean_items, p_ch) in CATEGORIES.items():
        m = category == c
        k = int(m.sum())
        log_amount[m] = mu + 0.5 * (np.log(customer_avg[m]) - 3.8) + rng.normal(0, sd, k)
        items[m] = 1 + rng.poisson(max(mean_items - 1, 0.01), k)
        channel[m] = rng.choice(CHANNELS, size=k, p=p_ch)
    amount = np.round(np.exp(log_amount), 2)
    travel = category == "travel"
    foreign = rng.random(n) < np.where(travel, 0.6, 0.03)
    country = np.where(foreign, rng.choice(["FR", "DE", "ES", "US", "JP"], size=n), "GB")
    distance = np.where(foreign, rng.lognormal(6.5, 0.6, n), rng.lognormal(1.5, 0.8, n))
    hour = np.clip(np.round(rng.normal(14, 4, n)), 0, 23).astype(int)
    return pd.DataFrame(
        {
            "amount": amount,
            "customer_avg_amount": np.round(customer_avg, 2),
            "n_items": items.astype(int),
            "distance_km": np.round(distance, 1),
            "hour": hour,
            "account_age_days": rng.integers(30, 3650, n),
            "category": category,
            "channel": channel,
            "country": country,
        }
    )


def _inject(rng: np.random.Generator, df: pd.DataFrame, rows: np.ndarray) -> list[str]:
    kinds = []
    for i in rows:
        kind = ANOMALY_KINDS[int(rng.integers(len(ANOMALY_KINDS)))]
        kinds.append(kind)
        if kind == "amount_spike":
            df.loc[i, "amount"] = round(float(df.loc[i, "customer_avg_amount"]) * rng.uniform(15, 40), 2)
        elif kind == "impossible_channel":
            df.loc[i, ["category", "channel"]] = ["electronics", "atm"]
        elif kind == "far_foreign_night":
            df.loc[i, ["country", "hour"]] = [str(rng.choice(["BR", "NG", "RU"])), int(rng.integers(1, 5))]
            df.loc[i, "distance_km"] = round(float(rng.uniform(8000, 12000)), 1)
        elif kind == "item_burst":
            df.loc[i, ["category", "n_items"]] = ["restaurant", int(rng.integers(40, 80))]
        else:  # geo_mismatch: a foreign country at a few km from home
            df.loc[i, ["country", "distance_km"]] = ["US", round(float(rng.uniform(0.5, 3)), 1)]
    return kinds


def make_demo_data(
    out_dir: str | Path, seed: int = 7, n_train: int = 6000, n_new: int = 2000, anomaly_rate: float = 0.04
) -> DemoFiles:
    """Write ``train.csv``, ``new_batch.csv`` and ``new_batch_labels.csv`` into ``out_dir``."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = _normal_rows(rng, n_train)
    train.insert(0, "txn_id", [f"T{i:07d}" for i in range(n_train)])
    new = _normal_rows(rng, n_new)
    new.insert(0, "txn_id", [f"N{i:07d}" for i in range(n_new)])
    n_anom = round(anomaly_rate * n_new)
    rows = np.sort(rng.choice(n_new, size=n_anom, replace=False))
    kinds = _inject(rng, new, rows)
    labels = pd.DataFrame({"txn_id": new["txn_id"], "is_anomaly": 0, "kind": ""})
    labels.loc[rows, "is_anomaly"] = 1
    labels.loc[rows, "kind"] = kinds
    files = DemoFiles(out / "train.csv", out / "new_batch.csv", out / "new_batch_labels.csv")
    train.to_csv(files.train, index=False)
    new.to_csv(files.new_batch, index=False)
    labels.to_csv(files.labels, index=False)
    return files
