"""``explore``: what the VAE tutorials show, over a registered image model. Each command writes files into
``--out`` and logs them to the MLflow experiment ``vae-anomaly-explore`` (one run per command).

    python -m flows.explore samples --model models:/vae-anomaly-images@champion [--n 64] [--seed 0]
    python -m flows.explore interpolate A.png B.png [--steps 10]        # also FILE.idx3-ubyte.gz#INDEX
    python -m flows.explore latent IMAGES                               # folder, IDX/.npz, files or globs
    python -m flows.explore reconstruct IMAGE [IMAGE ...]

``latent`` writes a 2-D PNG (the first two principal axes of the posterior means when latent_dim > 2) and,
when latent_dim >= 3, an interactive 3-D HTML page; points are coloured by label (an IDX/.npz file's
labels, else the first folder under the input) or, without labels, by the model's flag.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from flows.cli import ArgumentParser, run
from pipeline.data.paths import regular_file
from pipeline.errors import InputError

_INDEXED = re.compile(r"^(?P<file>.+)#(?P<index>\d+)$")

# Bounds of explore's sizes. Each command draws one figure: past these it is unreadable, and its drawing
# time and memory grow without bound (``samples --n 20000`` was still drawing its grid after 90 s).
# The arguments are checked before the model is loaded; the number of images ``latent`` reads, once read.
N_RANGE = (1, 1024)  # samples --n: one grid image, at most 32 x 32 images
STEPS_RANGE = (2, 100)  # interpolate --steps: one strip, a column per step
RECONSTRUCT_MAX = 64  # reconstruct: one column per image
LATENT_MAX = 100_000  # latent: points of the scatter plots (MNIST's 70 000 images fit)
SEED_RANGE = (0, 2**32 - 1)  # what every seeded generator accepts


def read_one(spec: str, det: Any) -> np.ndarray:
    """One image (C, H, W) in the model's format: an image file, or ``ARRAYFILE#INDEX`` for IDX/.npz files.

    Raises:
        InputError: the file does not exist, cannot be decoded, or the index is out of range.
    """
    from pipeline.data.images import decode_image, read_images

    m = _INDEXED.match(spec)
    if m and not Path(spec).exists():
        images = read_images(m["file"], mode=det.image_mode, size=det.image_size)
        i = int(m["index"])
        if not 0 <= i < len(images):
            raise InputError(f"{m['file']} holds {len(images)} images, index {i} is out of range")
        return images.pixels[i]
    p = regular_file(spec, "image")  # never opens a FIFO (it would block)
    try:
        return decode_image(p, det.image_mode, det.image_size)[0]
    except Exception as e:  # Pillow's many error types
        raise InputError(f"cannot decode image {p}: {type(e).__name__}: {e}") from e


def samples(det: Any, out: Path, n: int, seed: int) -> list[Path]:
    from pipeline.score.image_plots import image_grid

    return [
        image_grid(
            det.sample(n, seed),
            out / "prior_samples.png",
            f"{n} images decoded from the prior z ~ N(0, I) (seed {seed})",
        )
    ]


def interpolate(det: Any, out: Path, a: str, b: str, steps: int) -> list[Path]:
    """Decode z_t = (1 - t) mu(a) + t mu(b), t in [0, 1]: a straight line between the two posterior means."""
    from pipeline.score.image_plots import image_grid

    x = np.stack([read_one(a, det), read_one(b, det)])
    za, zb = det.encode(x)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    strip = det.decode((1.0 - t) * za + t * zb)
    frames = np.concatenate([x[:1], strip, x[1:]])
    names = ["A", *[f"t={v:.2f}" for v in t[:, 0]], "B"]
    return [
        image_grid(
            frames,
            out / "interpolation.png",
            f"interpolation in latent space: {a} -> {b}",
            ncols=len(frames),
            labels=names,
        )
    ]


def _labels(images: Any) -> tuple[np.ndarray | None, str]:
    if images.labels is not None:
        return images.labels[images.ok] if len(images.labels) == len(images) else images.labels, "label"
    tops = [p.split("/")[0] if "/" in p else "" for p, ok in zip(images.paths, images.ok, strict=True) if ok]
    if len(set(tops)) > 1 and all(tops):
        return np.asarray(tops), "folder"
    return None, ""


def latent(det: Any, out: Path, source: list[str]) -> list[Path]:
    from pipeline.data.images import read_images
    from pipeline.score.image_plots import latent_scatter_2d, latent_scatter_3d_html

    images = read_images(source[0] if len(source) == 1 else source, mode=det.image_mode, size=det.image_size)
    if len(images) > LATENT_MAX:
        raise InputError(
            f"latent: {' '.join(source)} holds {len(images)} images, at most {LATENT_MAX} are plotted: "
            "give a subset (a folder, files or a glob)"
        )
    x = images.pixels
    z = det.encode(x)
    colour, name = _labels(images)
    if colour is None:
        colour, name = (det.score_samples(x) > det.threshold_).astype(int), "flagged"
    files = [latent_scatter_2d(z, colour, name, out / "latent_2d.png")]
    if z.shape[1] >= 3:
        names = [p for p, ok in zip(images.paths, images.ok, strict=True) if ok]
        files.append(latent_scatter_3d_html(z, colour, name, names, out / "latent_3d.html"))
    return files


def reconstruct(det: Any, out: Path, specs: list[str]) -> list[Path]:
    from pipeline.score.image_plots import reconstruction_pairs

    x = np.stack([read_one(s, det) for s in specs])
    recon, _ = det.reconstruct(x)
    return [reconstruction_pairs(x, recon, det.score_samples(x), specs, out / "reconstructions.png")]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m flows.explore", description=__doc__.split("\n")[0])
    common = ArgumentParser(add_help=False)
    common.add_argument(
        "--model",
        default="models:/vae-anomaly-images@champion",
        help="MLflow URI of an image model (default: models:/vae-anomaly-images@champion)",
    )
    common.add_argument("--out", type=Path, default=Path("reports") / "explore", help="output folder")
    common.add_argument("--experiment", default="vae-anomaly-explore", help="MLflow experiment")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("samples", parents=[common], help="a grid of images decoded from the prior")
    s.add_argument("--n", type=int, default=64, help=f"images, {N_RANGE[0]}..{N_RANGE[1]} (default: 64)")
    s.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("interpolate", parents=[common], help="an interpolation strip between two images")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--steps", type=int, default=10, help=f"steps, {STEPS_RANGE[0]}..{STEPS_RANGE[1]} (default: 10)")
    s = sub.add_parser("latent", parents=[common], help="2-D PNG and 3-D HTML plots of the latent space")
    s.add_argument("images", nargs="+")
    s = sub.add_parser(
        "reconstruct", parents=[common], help=f"reconstructions of given images (at most {RECONSTRUCT_MAX})"
    )
    s.add_argument("images", nargs="+")
    return p


def _check_range(flag: str, value: int, bounds: tuple[int, int], what: str) -> None:
    lo, hi = bounds
    if not lo <= value <= hi:
        raise InputError(f"{flag} must be in {lo}..{hi} ({what}), got {value}")


def check_args(args: Any) -> None:
    """Refuse sizes outside explore's bounds (see ``N_RANGE``...), before any model is loaded.

    Raises:
        InputError: names the flag, the value and the allowed range.
    """
    if args.command == "samples":
        _check_range("--n", args.n, N_RANGE, "images on one grid")
        _check_range("--seed", args.seed, SEED_RANGE, "a seed")
    elif args.command == "interpolate":
        _check_range("--steps", args.steps, STEPS_RANGE, "columns of one strip")
    elif args.command == "reconstruct" and len(args.images) > RECONSTRUCT_MAX:
        raise InputError(
            f"reconstruct takes at most {RECONSTRUCT_MAX} images (columns of one figure), got {len(args.images)}"
        )


def explore(args: Any) -> tuple[list[Path], str]:
    """Run one explore command; returns the files written and the MLflow run id."""
    from flows import tracking
    from pipeline.errors import ModelError

    check_args(args)
    tracking.setup()
    model = tracking.load_model(args.model)
    det = model.detector
    if getattr(det, "kind", "table") != "image":
        raise ModelError(f"model {args.model} is a table model: explore needs an image model")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {out}: {e.strerror or e}") from e
    cmd = args.command
    if cmd == "samples":
        files, params = samples(det, out, args.n, args.seed), {"n": args.n, "seed": args.seed}
    elif cmd == "interpolate":
        files, params = interpolate(det, out, args.a, args.b, args.steps), {"a": args.a, "b": args.b}
    elif cmd == "latent":
        files, params = latent(det, out, args.images), {"images": " ".join(args.images)}
    else:
        files, params = reconstruct(det, out, args.images), {"images": " ".join(args.images)}
    run_id = tracking.log_explore_run(
        cmd, args.model, files, {**params, "model_version": model.version}, args.experiment
    )
    return files, run_id


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        files, run_id = explore(args)
        for f in files:
            print(f"wrote {f}")
        print(f"logged to MLflow run {run_id} (experiment {args.experiment})")
        return 0

    return run("python -m flows.explore", body)


if __name__ == "__main__":
    sys.exit(main())
