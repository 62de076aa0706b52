"""``make demo``: make demo data, train and register a model, score a new batch, print the results.

    python -m flows.demo [--data-dir data/demo] [--out reports]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from flows.cli import ArgumentParser, run
from flows.config import ScoreConfig, TrainConfig
from flows.settings import project_root, redact, tracking_uri


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m flows.demo", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=project_root() / "data" / "demo")
    p.add_argument("--out", type=Path, default=project_root() / "reports")
    p.add_argument("--model-name", default="vae-anomaly")
    args = p.parse_args(argv)

    def body() -> int:
        from sklearn.metrics import roc_auc_score

        from flows.score import print_summary, score
        from flows.train import train
        from pipeline.demo import make_demo_data

        t0 = time.perf_counter()
        files = make_demo_data(args.data_dir)
        print(f"demo data: {files.train} (training), {files.new_batch} (new batch), {files.labels} (labels)")
        t1 = time.perf_counter()
        summary = train(TrainConfig(data=files.train, model_name=args.model_name, id_columns=["txn_id"]))
        t2 = time.perf_counter()
        print(f"trained and registered {summary['model_name']} v{summary['version']} @{summary['alias']}: "
              f"{summary['epochs']} epochs on {summary['device']}, threshold {summary['threshold']:.4g} "
              f"at alpha={summary['alpha']}")
        uri = f"models:/{args.model_name}@champion"
        [s] = score(ScoreConfig(inputs=[files.new_batch], model=uri, out=args.out))
        t3 = time.perf_counter()
        print_summary(s)
        report = pd.read_csv(s["report"], dtype={"txn_id": str})
        labels = pd.read_csv(files.labels, dtype={"txn_id": str})
        merged = report.merge(labels, on="txn_id", suffixes=("", "_true"))
        auroc = roc_auc_score(merged["is_anomaly_true"], merged["score"])
        tp = int(((merged["is_anomaly"] == 1) & (merged["is_anomaly_true"] == 1)).sum())
        print(f"demo batch: AUROC {auroc:.3f} against the injected labels; {tp} of "
              f"{int(merged['is_anomaly_true'].sum())} injected anomalies flagged, "
              f"{int(merged['is_anomaly'].sum()) - tp} normal rows flagged")
        print(f"timings: data {t1 - t0:.1f}s, train flow {t2 - t1:.1f}s, score flow {t3 - t2:.1f}s")
        print(f"MLflow store: {redact(tracking_uri())}; open the UI with:\n"
              f"  .venv/bin/mlflow ui --backend-store-uri {redact(tracking_uri())} --port 5000")
        print(f"REPORT: {s['report']}")
        return 0

    return run("python -m flows.demo", body)


if __name__ == "__main__":
    sys.exit(main())
