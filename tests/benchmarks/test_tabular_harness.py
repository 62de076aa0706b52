"""The benchmark harness's contract: its CSV columns, one row per dataset x seed x method, the protocol."""

import argparse

import numpy as np
import pandas as pd

from benchmarks.calibration import check
from benchmarks.protocol import run_datasets, split
from benchmarks.tabular import main

# the contract other tools read: these columns, in this order, lead every results CSV
CONTRACT = "dataset seed method n_train n_test_normal n_test_anomaly auroc auprc threshold_fpr threshold_recall"
COLUMNS = [*CONTRACT.split(), "fit_s", "score_s", "calibration"]


def test_split_halves_the_normals_and_puts_every_anomaly_in_test():
    y = np.r_[np.zeros(101), np.ones(7)].astype(int)
    pool, test, y_test = split(y, seed=3)
    assert len(pool) == 50 and (y[pool] == 0).all()
    assert set(pool).isdisjoint(test) and len(pool) + len(test) == len(y)
    assert y_test.sum() == 7 and np.array_equal(y_test, y[test])


def test_harness_writes_the_contract_csv(tmp_path):
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(size=(700, 4)), rng.normal(4.0, 1.0, size=(30, 4))].astype(np.float32)
    y = np.r_[np.zeros(700), np.ones(30)].astype(np.int8)
    data = tmp_path / "data"
    data.mkdir()
    np.savez_compressed(data / "toy.npz", X=x, y=y)
    out = tmp_path / "res.csv"
    assert (
        main(
            [
                "--data-dir",
                str(data),
                "--seeds",
                "1",
                "--methods",
                "vae-anomaly",
                "knn",
                "iforest",
                "--out",
                str(out),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    df = pd.read_csv(out)
    assert list(df.columns)[: len(COLUMNS)] == COLUMNS
    assert sorted(df["method"]) == ["iforest", "knn", "vae-anomaly"]
    assert (df["n_train"] == 350).all() and (df["n_test_anomaly"] == 30).all()
    assert (df["auroc"] > 0.95).all()
    # 350 normal training rows leave 70 calibration rows at alpha 0.05, fewer than 5 / alpha: cross-conformal
    assert df.set_index("method")["calibration"].fillna("").to_dict() == {
        "vae-anomaly": "cross",
        "knn": "",
        "iforest": "",
    }
    text, _ = check(out, 0.05, "vae-anomaly", 1000)
    assert "### Cross-conformal thresholds" in text and "| toy | 1 | 350 |" in text


def test_run_datasets_names_each_row_and_keeps_finished_datasets(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name, n in (("a", 3), ("b", 5)):
        np.savez(data / f"{name}.npz", X=np.zeros((n, 2)), y=np.zeros(n, dtype=int))
    args = argparse.Namespace(data_dir=data, datasets=None, out=tmp_path / "out" / "r.csv")

    def trials(x, y):
        for seed in range(2):
            if len(x) == 5 and seed == 1:
                assert pd.read_csv(args.out)["dataset"].tolist() == ["a", "a"]  # written after dataset a
            yield {"seed": seed, "rows": len(x)}

    df = run_datasets(args, trials, lambda r: f"{r['dataset']} {r['seed']}")
    assert df.to_dict("list") == {"dataset": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "rows": [3, 3, 5, 5]}
    assert capsys.readouterr().out.split("\n")[:4] == ["a 0", "a 1", "b 0", "b 1"]
    assert pd.read_csv(args.out).equals(df)
