"""Image batch scoring: ``score_images_batch`` on a folder of PNGs and on an IDX file, time and peak memory.

    python -m benchmarks.image_scoring [--copies 2] [--repeats 3] [--baseline DIR] [--out FILE.json]

1. Trains a small image detector (digit 0 of MNIST's test file, ``--epochs`` epochs: its quality does not
   matter here) and saves it in a work folder.
2. Writes the test file's 10,000 images ``--copies`` times as PNG files into a folder, and the same images as
   one IDX file.
3. Scores each input ``--repeats`` times, each in a fresh process (its wall time, the part spent in
   ``score_images_batch`` and the child's peak RSS from ``wait4``). With ``--baseline DIR`` (a checkout of
   another commit, e.g. ``git worktree add /tmp/base HEAD~1``) every run is paired with the same run of that
   tree, alternating, and the results hold each figure's ratio (this tree / baseline).

Data: ``$VAE_ANOMALY_IMAGE_DATA`` or ../shared/data/images (``mnist/t10k-images-idx3-ubyte.gz`` and labels).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from benchmarks.machine import available_cpus, cpu_name

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "VAE_ANOMALY_IMAGE_DATA"
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "images"
CHILD = """
import json, sys, time
from pipeline.detect.image_detector import ImageVAEDetector
from pipeline.score.image_scoring import score_images_batch
det = ImageVAEDetector.load(sys.argv[1])
t0 = time.perf_counter()
s = score_images_batch(det, sys.argv[2], sys.argv[3], top_k=16)
print(json.dumps({"batch_s": time.perf_counter() - t0, "rows": s.rows, "flagged": s.flagged}))
"""


def prepare(data_dir: Path, work: Path, copies: int, epochs: int) -> dict[str, Path]:
    """The saved detector, the PNG folder and the IDX file, in ``work``."""
    from PIL import Image

    from pipeline.data.image_arrays import read_idx, read_idx_labels
    from pipeline.detect.image_detector import ImageVAEDetector
    from vae.config import ImageTrainConfig

    idx = data_dir / "mnist" / "t10k-images-idx3-ubyte.gz"
    x, y = read_idx(idx), read_idx_labels(idx)
    assert y is not None
    det = ImageVAEDetector(alpha=0.05, train_config=ImageTrainConfig(max_epochs=epochs, device="cpu"))
    det.fit((x[y == 0][:, None] / 255.0).astype(np.float32))
    det.save(work / "model")
    folder = work / "pngs"
    for c in range(copies):
        part = folder / f"copy{c}"
        part.mkdir(parents=True)
        for i, img in enumerate(x):
            Image.fromarray(img).save(part / f"{i:05d}.png")
    with gzip.open(idx) as src, open(work / "batch-idx3-ubyte", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return {"model": work / "model", "folder": folder, "idx": work / "batch-idx3-ubyte"}


def measure(tree: Path, paths: dict[str, Path], source: str, out: Path) -> dict[str, Any]:
    """One scoring run in a fresh process of ``tree``: wall time, the batch's own time, peak RSS (MiB)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-c", CHILD, str(paths["model"]), str(paths[source]), str(out)]
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
        log.seek(0)
        text = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"scoring {source} in {tree} failed: {text[-2000:]}")
    result = json.loads(text.strip().splitlines()[-1])
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, **result}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.image_scoring", description=__doc__.split("\n")[0])
    p.add_argument("--copies", type=int, default=2, help="copies of the 10,000 test images in the folder (2)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each input, medians reported (3)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the detector (2)")
    p.add_argument("--baseline", type=Path, default=None, help="another checkout to pair every run with")
    p.add_argument("--data-dir", type=Path, default=None, help=f"default ${DATA_ENV} or {DEFAULT_DATA_DIR}")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/image_scoring.json"))
    args = p.parse_args(argv)
    data_dir = args.data_dir or Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)
    trees = {"this": REPO_ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    with tempfile.TemporaryDirectory(prefix="vae-anomaly-image-bench.") as tmp:
        work = Path(tmp)
        paths = prepare(data_dir, work, args.copies, args.epochs)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {t: [] for t in trees} for s in ("folder", "idx")}
        for r in range(args.repeats):
            for source in runs:
                for tree, root in trees.items():
                    out = work / f"out-{tree}-{source}-{r}"
                    m = measure(root, paths, source, out)
                    runs[source][tree].append(m)
                    print(
                        f"{source:6s} {tree:8s} run {r}: {m['seconds']:.2f} s (batch {m['batch_s']:.2f} s), "
                        f"peak {m['peak_rss_mb']:.0f} MiB, {m['rows']} images",
                        flush=True,
                    )
    result: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.image_scoring", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cpus_available": available_cpus(),
        "copies": args.copies,
        "repeats": args.repeats,
        "runs": runs,
    }
    for source, by_tree in runs.items():
        for tree, ms in by_tree.items():
            for k in ("seconds", "batch_s", "peak_rss_mb"):
                result[f"{source}_{tree}_{k}"] = median(m[k] for m in ms)
        if "baseline" in by_tree:
            for k in ("seconds", "batch_s", "peak_rss_mb"):
                result[f"{source}_ratio_{k}"] = result[f"{source}_this_{k}"] / result[f"{source}_baseline_{k}"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    for k, v in result.items():
        if k.startswith(("folder_", "idx_")):
            print(f"{k}: {v:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
