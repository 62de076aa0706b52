"""``train`` flow: read a table or images, fit the VAE detector, calibrate, log to MLflow, register, set alias.

    python -m flows.train --data data/demo/train.csv --model-name vae-anomaly --id-columns txn_id
    python -m flows.train data/demo/images/train --model-name vae-anomaly-images --alpha 0.05
    python -m flows.train train-images-idx3-ubyte.gz --normal-label 0

The kind of data (``--kind table|image``) defaults to what the first input holds: a folder, an image
file, a glob or an IDX file means images; a CSV or Parquet file (or ``.npz``) a table.
"""

from __future__ import annotations

import sys
from typing import Any

from flows.cli import ArgumentParser, csv_list, orchestration, print_registered, run
from flows.config import TrainConfig


def preflight(config: TrainConfig) -> None:
    """Refuse, before the flow starts, a training table that is missing or unreadable, or that lacks a column
    an option names.

    Raises:
        InputError: naming the file and the column.
    """
    if config.kind != "table":
        return
    from pipeline.data.io import read_header
    from pipeline.data.schema import check_named_columns

    header = read_header(config.data[0])
    if header is not None:
        named = [*config.id_columns, *config.categorical_columns, config.label_column, config.segment_column]
        check_named_columns(header, named, config.data[0])


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m flows.train", description=__doc__.split("\n")[0])
    p.add_argument(
        "data",
        nargs="*",
        help="a training table (CSV or Parquet), or normal images: a folder (searched recursively), "
        "image files or globs, an IDX (*-idx3-ubyte[.gz]) or .npz file",
    )
    p.add_argument("--data", dest="data_option", action="append", default=[], help="same as the positional")
    p.add_argument("--kind", default="auto", choices=["auto", "table", "image"], help="default: from the input")
    p.add_argument("--model-name", default=None, help="registered model (default: vae-anomaly, vae-anomaly-images)")
    p.add_argument("--alias", default="champion", help="alias for the new version (default: champion)")
    p.add_argument("--experiment", default="vae-anomaly", help="MLflow experiment (default: vae-anomaly)")
    p.add_argument("--alpha", type=float, default=0.01, help="target false-positive rate (default: 0.01)")
    p.add_argument("--max-epochs", type=int, default=None, help="cap on epochs (default: the trainer's budget)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--latent-dim", type=int, default=None, help="(default: chosen from the data; 16 for images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t = p.add_argument_group("tables")
    t.add_argument("--id-columns", type=csv_list, default=[], help="comma-separated columns carried to reports")
    t.add_argument("--label-column", default=None, help="0/1 column (1 = anomaly), used only for evaluation")
    t.add_argument("--categorical-columns", type=csv_list, default=[], help="force these columns categorical")
    t.add_argument(
        "--segment-column",
        default=None,
        help="categorical column whose values (segments) each get their own threshold (default: one threshold)",
    )
    t.add_argument(
        "--trim-fraction",
        type=float,
        default=None,
        help="training data holds some anomalies: leave this fraction of the worst-fitting rows of "
        "each batch out of training (default: 0)",
    )
    i = p.add_argument_group("images")
    i.add_argument("--normal-label", type=int, default=None, help="labelled IDX/.npz: train on this label only")
    i.add_argument("--likelihood", default=None, choices=["gaussian", "bernoulli", "cbernoulli"])
    i.add_argument("--score-method", default=None, choices=["recon", "elbo", "iwae"])
    i.add_argument("--n-models", type=int, default=None, help="ensemble size (default: 1)")
    return p


def config_from(args: Any) -> TrainConfig:
    """The flow's config from parsed arguments; options left at their defaults are not passed."""
    from pipeline.errors import InputError

    values = vars(args)
    data = [*values.pop("data"), *values.pop("data_option")]
    if not data:
        raise InputError(
            "no training data given: pass a table (CSV/Parquet), or a folder, image files, a glob, or an IDX/.npz file"
        )
    given = {k: v for k, v in values.items() if v is not None and v != []}
    return TrainConfig(data=data, **given)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        config = config_from(args)
        preflight(config)
        flow = orchestration("flows.train_flow")
        print_registered(flow.train(config))
        return 0

    return run("python -m flows.train", body)


if __name__ == "__main__":
    sys.exit(main())
