"""``make demo``: make demo data, train and register a model, score a new batch, print the results.

python -m flows.demo [--data-dir data/demo] [--out reports]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from flows.cli import ArgumentParser, orchestration, run
from flows.config import ScoreConfig, TrainConfig
from flows.settings import project_root, redact, tracking_uri


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m flows.demo", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=project_root() / "data" / "demo")
    p.add_argument("--out", type=Path, default=project_root() / "reports")
    p.add_argument("--model-name", default="vae-anomaly")
    p.add_argument(
        "--images",
        choices=["yes", "no", "only"],
        default="yes",
        help="also run the image demo (sklearn 8x8 digits as PNGs), skip it, or run only it",
    )
    args = p.parse_args(argv)

    def body() -> int:
        for module in ("flows.train_flow", "flows.score_flow"):  # Prefect, MLflow, torch; Prefect's console quiet
            orchestration(module)
        if args.images == "only":
            image_demo(args.data_dir / "images", args.out / "images", f"{args.model_name}-images")
            return explore_demo(args.data_dir / "digits", args.out / "explore", f"{args.model_name}-digits")

        from flows.train_flow import train
        from pipeline.data.demo import make_demo_data

        t0 = time.perf_counter()
        files = make_demo_data(args.data_dir)
        print(f"demo data: {files.train} (training), {files.new_batch} (new batch), {files.labels} (labels)")
        t1 = time.perf_counter()
        summary = train(TrainConfig(kind="table", data=files.train, model_name=args.model_name, id_columns=["txn_id"]))
        t2 = time.perf_counter()
        print(
            f"trained and registered {summary['model_name']} v{summary['version']} @{summary['alias']}: "
            f"{summary['epochs']} epochs on {summary['device']}, threshold {summary['threshold']:.4g} "
            f"at alpha={summary['alpha']}"
        )
        s = score_against_labels("table", files.new_batch, args.model_name, args.out, files.labels, "txn_id")
        t3 = time.perf_counter()
        print(f"timings: data {t1 - t0:.1f}s, train flow {t2 - t1:.1f}s, score flow {t3 - t2:.1f}s")
        print(
            f"MLflow store: {redact(tracking_uri())}; open the UI with:\n"
            f"  .venv/bin/mlflow ui --backend-store-uri {redact(tracking_uri())} --port 5000"
        )
        print(f"REPORT: {s['report']}")
        if args.images == "yes":
            image_demo(args.data_dir / "images", args.out / "images", f"{args.model_name}-images")
            return explore_demo(args.data_dir / "digits", args.out / "explore", f"{args.model_name}-digits")
        return 0

    return run("python -m flows.demo", body)


def score_against_labels(kind: str, batch: Path, model_name: str, out: Path, labels: Path, key: str) -> dict:
    """Score a demo batch with the model's champion, print its summary and how it did against the batch's labels
    (``is_anomaly``, 1 = anomaly, joined on ``key``); returns the summary."""
    from sklearn.metrics import roc_auc_score

    from flows.score import print_summary
    from flows.score_flow import score

    [s] = score(ScoreConfig(kind=kind, inputs=batch, model=f"models:/{model_name}@champion", out=out))
    print_summary(s)
    merged = pd.read_csv(s["report"], dtype={key: str}).merge(
        pd.read_csv(labels, dtype={key: str}), on=key, suffixes=("", "_true")
    )
    truth, flagged = merged["is_anomaly_true"] == 1, merged["is_anomaly"] == 1
    unit = "images" if kind == "image" else "rows"
    print(
        f"{kind} demo batch: AUROC {roc_auc_score(truth, merged['score']):.3f} against its labels; "
        f"{int((flagged & truth).sum())} of {int(truth.sum())} anomalies flagged, "
        f"{int((flagged & ~truth).sum())} normal {unit} flagged"
    )
    return s


def image_demo(data_dir: Path, out: Path, model_name: str) -> int:
    """Digit 0 of scikit-learn's 8x8 digits is normal: train on its PNGs, score a batch of 0s and other digits."""
    from flows.train_flow import train
    from pipeline.data.image_demo import make_digit_images

    t0 = time.perf_counter()
    files = make_digit_images(data_dir)
    print(f"\nimage demo data: {files.train} (digit 0, training), {files.new_batch} (new batch), {files.labels}")
    summary = train(TrainConfig(kind="image", data=files.train, model_name=model_name, alpha=0.05, max_epochs=30))
    t1 = time.perf_counter()
    print(
        f"trained and registered {summary['model_name']} v{summary['version']} @{summary['alias']}: "
        f"{summary['epochs']} epochs on {summary['device']}, {summary['train']} training images "
        f"{summary['image_size']} {summary['image_mode']}, threshold {summary['threshold']:.4g} at alpha=0.05"
    )
    s = score_against_labels("image", files.new_batch, model_name, out, files.labels, "path")
    t2 = time.perf_counter()
    print(f"image timings: data + train flow {t1 - t0:.1f}s, score flow {t2 - t1:.1f}s")
    print(f"IMAGE REPORT: {s['report']}")
    print(f"CONTACT SHEET: {s['contact_sheet']}")
    return 0


def explore_demo(data_dir: Path, out: Path, model_name: str) -> int:
    """A VAE of all 1,797 digits, and what the VAE tutorials show of it: prior samples, reconstructions, an
    interpolation from a 0 to a 1, and the latent space coloured by digit (``python -m flows.explore``)."""
    import argparse

    from flows.explore import explore
    from flows.train_flow import train
    from pipeline.data.image_demo import write_all_digits

    t0 = time.perf_counter()
    digits = write_all_digits(data_dir)
    s = train(TrainConfig(kind="image", data=digits, model_name=model_name, alpha=0.05, latent_dim=8, max_epochs=120))
    print(
        f"\nexplore demo: trained {s['model_name']} v{s['version']} on all {s['train'] + s['val'] + s['cal']} "
        f"digits ({s['epochs']} epochs, {s['train_seconds']:.0f}s)"
    )
    uri = f"models:/{model_name}@champion"
    zero, one = sorted((digits / "0").iterdir())[0], sorted((digits / "1").iterdir())[0]
    firsts = [sorted((digits / str(d)).iterdir())[0] for d in range(10)]
    commands = [
        {"command": "samples", "n": 64, "seed": 0},
        {"command": "reconstruct", "images": [str(p) for p in firsts]},
        {"command": "interpolate", "a": str(zero), "b": str(one), "steps": 10},
        {"command": "latent", "images": [str(digits)]},
    ]
    for c in commands:
        files, _ = explore(argparse.Namespace(model=uri, out=out, experiment="vae-anomaly-explore", **c))
        print(f"  {c['command']}: " + ", ".join(str(f) for f in files))
    print(f"explore demo: {time.perf_counter() - t0:.1f}s; more with python -m flows.explore --help")
    return 0


if __name__ == "__main__":
    sys.exit(main())
