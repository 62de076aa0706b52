"""``train_images`` flow: read normal images, fit the convolutional VAE, calibrate, log to MLflow, register.

python -m flows.train --kind image data/demo/images/train --model-name vae-anomaly-images --alpha 0.05
python -m flows.train train-images-idx3-ubyte.gz --normal-label 0      # kind detected from the input
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from flows import image_tracking, tracking
from flows.cli import ArgumentParser, flow_failure, print_registered, run
from flows.config import ImageTrainConfig
from flows.outcome import UserError, user_errors
from pipeline.errors import InputError
from pipeline.image_detector import ImageVAEDetector
from pipeline.images import ImageSet, read_training_images
from vae.config import ImageTrainConfig as TrainerConfig


def select_label(images: ImageSet, label: int | None) -> ImageSet:
    """Keep only the images with ``label`` (from an IDX/.npz file's labels); all images when None.

    Raises:
        InputError: a label was asked for but the input has no labels, or none of its images has it.
    """
    if label is None:
        return images
    if images.labels is None:
        raise InputError(
            f"{images.root}: --normal-label {label} needs labels (an IDX file with its "
            "*-labels-idx1-ubyte[.gz] sibling, or an .npz with 'labels' or 'y'); none found"
        )
    keep = images.labels == label
    if not keep.any():
        raise InputError(
            f"{images.root}: no image has label {label}; labels found: "
            f"{sorted(int(v) for v in np.unique(images.labels))}"
        )
    idx = np.flatnonzero(keep)
    return ImageSet(
        images.root,
        [images.paths[i] for i in idx],
        images.pixels[idx],
        [""] * len(idx),
        images.labels[idx],
        images.notes,
    )


@task(cache_policy=NO_CACHE)
def load_training_images(config: ImageTrainConfig) -> ImageSet | UserError:
    try:
        source = config.data[0] if len(config.data) == 1 else config.data
        return select_label(read_training_images(source), config.normal_label)
    except user_errors() as e:
        return UserError.of(e)


def trainer_config(config: ImageTrainConfig) -> TrainerConfig:
    """The image trainer's defaults, overridden by what the flow's config sets."""
    given = {"max_epochs": config.max_epochs, "batch_size": config.batch_size}
    return TrainerConfig(seed=config.seed, device=config.device, **{k: v for k, v in given.items() if v is not None})


@task(cache_policy=NO_CACHE)
def fit_image_detector(images: ImageSet, config: ImageTrainConfig) -> ImageVAEDetector | UserError:
    det = ImageVAEDetector(
        alpha=config.alpha,
        latent_dim=config.latent_dim,
        likelihood=config.likelihood,
        score_method=config.score_method,
        n_models=config.n_models,
        seed=config.seed,
        train_config=trainer_config(config),
    )
    try:
        return det.fit(images.pixels)
    except user_errors() as e:
        return UserError.of(InputError(f"{images.root}: {e}") if isinstance(e, InputError) else e)
    except FloatingPointError as e:
        return UserError.of(InputError(f"{images.root}: training failed ({e})"))


@task(cache_policy=NO_CACHE)
def register_image_model(
    det: ImageVAEDetector, images: ImageSet, config: ImageTrainConfig
) -> tracking.RegisteredVersion | UserError:
    try:
        tracking.setup(config.experiment)
        params = config.model_dump(mode="json", exclude={"model_name", "alias", "experiment"})
        params = {k: ("" if v is None else str(v)) for k, v in params.items()}
        k = min(8, len(images.pixels))
        n_err = sum(1 for e in images.errors if e)
        notes = [*images.notes, *([f"{n_err} undecodable images left out"] if n_err else [])]
        return image_tracking.log_image_training_run(
            det, params, config.model_name, config.alias, images.pixels[:k], images.paths[:k], notes
        )
    except user_errors() as e:
        return UserError.of(e)


@flow(name="train-images", log_prints=True)
def train_images(config: ImageTrainConfig) -> dict[str, Any]:
    """Train, calibrate and register a convolutional VAE image detector; returns a summary."""
    images = load_training_images(config)
    if isinstance(images, UserError):
        return Failed(message=images.message, data=images)  # type: ignore[return-value]
    det = fit_image_detector(images, config)
    if isinstance(det, UserError):
        return Failed(message=det.message, data=det)  # type: ignore[return-value]
    reg = register_image_model(det, images, config)
    if isinstance(reg, UserError):
        return Failed(message=reg.message, data=reg)  # type: ignore[return-value]
    h = det.history_
    return {
        "model_name": reg.name,
        "version": reg.version,
        "alias": reg.alias,
        "model_uri": reg.model_uri,
        "run_id": reg.run_id,
        "threshold": det.threshold_,
        "alpha": det.alpha,
        **det.n_rows_,
        "image_mode": det.image_mode,
        "image_size": "x".join(map(str, det.image_size)),
        "undecodable": sum(1 for e in images.errors if e),
        "notes": images.notes,
        "epochs": len(h.train_loss),
        "best_epoch": h.best_epoch,
        "train_seconds": round(h.seconds, 2),
        "device": h.device,
        "tracking_uri": tracking.redact(tracking.tracking_uri()),
    }


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m flows.train --kind image", description=__doc__.split("\n")[0])
    p.add_argument(
        "data",
        nargs="*",
        help="normal images: a folder (searched recursively), image files or "
        "globs, an IDX (*-idx3-ubyte[.gz]) or .npz file",
    )
    p.add_argument("--data", dest="data_option", action="append", default=[], help="same as the positional")
    p.add_argument("--normal-label", type=int, default=None, help="labelled IDX/.npz: train on this label only")
    p.add_argument("--model-name", default="vae-anomaly-images", help="registered model (default: vae-anomaly-images)")
    p.add_argument("--alias", default="champion", help="alias for the new version (default: champion)")
    p.add_argument("--experiment", default="vae-anomaly", help="MLflow experiment (default: vae-anomaly)")
    p.add_argument("--alpha", type=float, default=0.01, help="target false-positive rate (default: 0.01)")
    p.add_argument("--max-epochs", type=int, default=None, help="cap on epochs (default: 20, early stopping)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--likelihood", default="gaussian", choices=["gaussian", "bernoulli", "cbernoulli"])
    p.add_argument("--score-method", default="recon", choices=["recon", "elbo", "iwae"])
    p.add_argument("--n-models", type=int, default=1, help="ensemble size (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        values = vars(args)
        data = [*values.pop("data"), *values.pop("data_option")]
        if not data:
            raise InputError("no training images given: pass a folder, image files, a glob, or an IDX/.npz file")
        config = ImageTrainConfig(data=[str(d) for d in data], **values)
        state = train_images(config, return_state=True)
        failed = flow_failure("python -m flows.train", state)
        if failed is not None:
            return failed
        print_registered(state.result())
        return 0

    return run("python -m flows.train", body)


if __name__ == "__main__":
    sys.exit(main())
