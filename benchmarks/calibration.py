"""Calibration check of a ``benchmarks.tabular`` results file: is each realised false-positive rate on test
normals what the calibration rule promises at alpha?

    python -m benchmarks.calibration benchmarks/results/tabular.csv --alpha 0.05 [--method vae-anomaly]

Split-conformal thresholds (``calibration`` = ``split``). Given n_cal calibration scores, the false-positive
rate of the threshold is itself random, Beta(n_cal + 1 - k, k) with k = ceil((n_cal + 1)(1 - alpha)), and
the count of flagged test normals among m is beta-binomial. Each dataset and seed is judged against the
exact 99% interval of that beta-binomial (a plain binomial interval ignores the calibration noise and is far
too narrow on large test sets such as donors'). n_cal is the detector's ``cal_fraction`` of the training pool.
The guarantee is an upper bound (a false-positive rate of at most alpha), so a count above the interval fails
the check and one below it is reported as conservative.

Cross-conformal thresholds (``calibration`` = ``cross``) are valid up to a factor 2 in the worst case and
carry no exact distribution: the realised rate is reported per dataset (pooled over seeds) with its mean over
datasets, next to what an exact conformal rule over all n training rows would give (rate
Beta(j, n + 1 - j), j = floor(alpha (n + 1))): its mean and the 99% band of the mean over datasets
(normal approximation). The check passes when that mean is at most the band's upper end.

Rows or datasets with fewer than ``--min-normals`` test normals are listed but not judged. Writes a markdown
report next to the input (``<stem>.calibration.md``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path


def _split_section(g, alpha: float, cal_fraction: float, min_normals: int) -> tuple[list[str], bool]:
    from scipy.stats import betabinom

    lines = [
        "### Split-conformal thresholds: each dataset and seed against the beta-binomial 99% interval",
        "",
        "| dataset | seed | calibration rows | test normals | flagged | realised FPR | beta-binomial 99% | where "
        "| judged |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    ok = True
    for r in g.itertuples():
        m = int(r.n_test_normal)
        k_flag = round(float(r.threshold_fpr) * m)
        n_cal = max(round(int(r.n_train) * cal_fraction), 1)
        k = math.ceil((n_cal + 1) * (1 - alpha) - 1e-9)
        lo, hi = betabinom(m, n_cal + 1 - k, k).interval(0.99)
        judged = m >= min_normals
        where = "inside" if lo <= k_flag <= hi else ("below (conservative)" if k_flag < lo else "ABOVE")
        ok &= where != "ABOVE" or not judged
        lines.append(
            f"| {r.dataset} | {r.seed} | {n_cal} | {m} | {k_flag} | {k_flag / m:.4f} | [{lo / m:.4f}, {hi / m:.4f}] "
            f"| {where} | {'yes' if judged else 'no (<' + str(min_normals) + ')'} |"
        )
    return lines, ok


def _cross_section(g, alpha: float, min_normals: int) -> tuple[list[str], bool]:
    lines = [
        "### Cross-conformal thresholds: realised false-positive rate per dataset (seeds pooled)",
        "",
        "| dataset | seeds | normal training rows | test normals (pooled) | flagged | realised FPR "
        "| exact conformal would give | judged |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    rates, expected, variances = [], [], []
    for name, d in g.groupby("dataset", sort=False):
        m_all = int(d["n_test_normal"].sum())
        k_all = round(float((d["threshold_fpr"] * d["n_test_normal"]).sum()))
        mus, var = [], 0.0
        for n, m in zip(d["n_train"], d["n_test_normal"], strict=True):
            j = max(math.floor(alpha * (int(n) + 1)), 1)
            a, b = j, int(n) + 1 - j
            mu = a / (a + b)
            mus.append(mu)
            var += mu * (1 - mu) / (a + b + 1) + mu * (1 - mu) / int(m)
        judged = bool((d["n_test_normal"] >= min_normals).all())
        if judged:
            rates.append(float(d["threshold_fpr"].mean()))
            expected.append(float(sum(mus) / len(mus)))
            variances.append(var / len(d) ** 2)
        pools = sorted({int(n) for n in d["n_train"]})
        lines.append(
            f"| {name} | {len(d)} | {', '.join(map(str, pools))} | {m_all} | {k_all} | {k_all / m_all:.4f} | "
            f"{sum(mus) / len(mus):.4f} | {'yes' if judged else 'no (<' + str(min_normals) + ')'} |"
        )
    if not rates:
        return [*lines, "", "No dataset judged."], True
    mean, want = sum(rates) / len(rates), sum(expected) / len(expected)
    upper = want + 2.576 * math.sqrt(sum(variances)) / len(rates)
    ok = mean <= upper
    lines += [
        "",
        f"Mean realised FPR over {len(rates)} datasets: **{mean:.4f}** (alpha={alpha}; an exact conformal rule "
        f"over the same training rows: {want:.4f}, 99% band of the mean up to {upper:.4f}): "
        f"{'within' if ok else 'ABOVE'} it.",
    ]
    return lines, ok


def check(csv_path: Path, alpha: float, method: str, min_normals: int) -> tuple[str, bool]:
    import pandas as pd

    from pipeline.detect.detector import VAEAnomalyDetector

    cal_fraction = VAEAnomalyDetector().cal_fraction
    df = pd.read_csv(csv_path)
    df = df[(df["method"] == method) & df["threshold_fpr"].notna()]
    rule = df["calibration"].fillna("split") if "calibration" in df.columns else pd.Series("split", index=df.index)
    lines = [f"Realised false-positive rate of `{method}` at alpha={alpha} ({csv_path.name}).", ""]
    ok = True
    if (rule == "split").any():
        part, good = _split_section(df[rule == "split"], alpha, cal_fraction, min_normals)
        lines += [*part, ""]
        ok &= good
    if (rule == "cross").any():
        part, good = _cross_section(df[rule == "cross"], alpha, min_normals)
        lines += [*part, ""]
        ok &= good
    return "\n".join(lines), ok


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
    print(f"no judged dataset above what its calibration rule promises: {ok}; written {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
