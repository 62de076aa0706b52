"""Calibration check of a ``benchmarks.tabular`` results file: is the realised false-positive rate
on test normals inside the binomial 99% interval of alpha?

    python -m benchmarks.calibration benchmarks/results/tabular.csv --alpha 0.05 [--method vae-anomaly]

Per dataset, the flagged test normals of all seeds are pooled and compared with
Binomial(total test normals, alpha). That interval ignores that each seed has its own calibration
set: given n_cal calibration scores, the false-positive rate of the split-conformal threshold is
itself random, Beta(n_cal + 1 - k, k) with k = ceil((n_cal + 1)(1 - alpha)), so the pooled count is
beta-binomial. The table also gives that 99% interval (normal approximation), which is the one the
guarantee speaks to; on large test sets (donors) the plain binomial one is far narrower than the
calibration noise. Datasets with fewer than ``--min-normals`` test normals per seed are listed but
not judged. Writes a markdown table next to the input (``<stem>.calibration.md``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path


def check(csv_path: Path, alpha: float, method: str, min_normals: int) -> tuple[str, bool]:
    import pandas as pd
    from scipy.stats import binom

    from pipeline.detector import VAEAnomalyDetector

    cal_fraction = VAEAnomalyDetector().cal_fraction
    df = pd.read_csv(csv_path)
    df = df[(df["method"] == method) & df["threshold_fpr"].notna()]
    lines = [
        f"Realised false-positive rate of `{method}` at alpha={alpha} ({csv_path.name}); "
        "99% binomial interval of alpha for the pooled test normals.",
        "",
        "| dataset | seeds | test normals (pooled) | flagged normals | realised FPR | binomial 99% "
        "| inside | with calibration noise, 99% | inside | judged |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- | --- | --- |",
    ]
    all_ok = True
    for name, g in df.groupby("dataset"):
        n = int(g["n_test_normal"].sum())
        k = round(float((g["threshold_fpr"] * g["n_test_normal"]).sum()))
        lo, hi = binom.interval(0.99, n, alpha)
        mean, var = 0.0, 0.0
        for m, pool in zip(g["n_test_normal"], g["n_train"], strict=True):
            n_cal = max(round(pool * cal_fraction), 1)
            kk = math.ceil((n_cal + 1) * (1 - alpha) - 1e-9)
            a, b = n_cal + 1 - kk, kk
            mu = a / (a + b)
            mean += m * mu
            var += m * mu * (1 - mu) * (1 + (m - 1) / (a + b + 1))  # beta-binomial
        blo, bhi = mean - 2.576 * math.sqrt(var), mean + 2.576 * math.sqrt(var)
        judged = bool((g["n_test_normal"] >= min_normals).all())
        inside, inside_b = lo <= k <= hi, blo <= k <= bhi
        all_ok &= inside_b or not judged
        lines.append(
            f"| {name} | {len(g)} | {n} | {k} | {k / n:.4f} | [{lo / n:.4f}, {hi / n:.4f}] | "
            f"{'yes' if inside else 'NO'} | [{blo / n:.4f}, {bhi / n:.4f}] | {'yes' if inside_b else 'NO'} | "
            f"{'yes' if judged else 'no (<' + str(min_normals) + ')'} |"
        )
    return "\n".join(lines) + "\n", all_ok


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.calibration", description=__doc__.split("\n")[0])
    p.add_argument("results", type=Path, help="CSV written by python -m benchmarks.tabular")
    p.add_argument("--alpha", type=float, required=True, help="the --alpha the results were made with")
    p.add_argument("--method", default="vae-anomaly")
    p.add_argument("--min-normals", type=int, default=1000, help="judge only datasets with this many test normals")
    args = p.parse_args(argv)
    text, ok = check(args.results, args.alpha, args.method, args.min_normals)
    out = args.results.with_name(f"{args.results.stem}.calibration.md")
    out.write_text(text)
    print(text)
    print(f"all judged datasets inside the interval with calibration noise: {ok}; written {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
