"""Reading IDX and .npz image arrays: headers and shapes checked, labels from a sibling file or array."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

from pipeline.data.paths import regular_file
from pipeline.errors import InputError

ARRAY_SUFFIXES = (".npz",)
IDX_PATTERN = re.compile(r"-idx3-ubyte(\.gz)?$")
IDX_LABELS = re.compile(r"-images-idx3-ubyte(\.gz)?$")
NPZ_IMAGE_KEYS = ("images", "x", "X")
NPZ_LABEL_KEYS = ("labels", "y")


def _read_maybe_gzip(path: Path) -> bytes:
    if path.name.endswith(".gz"):
        with gzip.open(path) as f:
            return f.read()
    return path.read_bytes()


def read_idx(path: Path) -> np.ndarray:
    """An IDX image file (optionally gzip) as (n, H, W) uint8, at least one image of at least 1x1 pixels.

    Raises:
        InputError: not a regular file, not an IDX3 uint8 file (names the magic number found), 0 images or
            0 pixels per image in its header, or truncated.
    """
    path = regular_file(path, "IDX file")
    try:
        raw = _read_maybe_gzip(path)
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 16:
        raise InputError(f"{path} is not an IDX image file: {len(raw)} bytes, expected a 16-byte header")
    magic, n, h, w = (int.from_bytes(raw[i : i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051:
        raise InputError(f"{path} is not an IDX image file: magic number {magic}, expected 2051 (0x00000803)")
    if n == 0:
        raise InputError(f"{path} holds 0 images: its header says 0 images of {h}x{w}; give a file with images")
    if h == 0 or w == 0:
        raise InputError(f"{path} holds images of {h}x{w} pixels (its header): an image needs at least 1x1 pixels")
    if len(raw) != 16 + n * h * w:
        raise InputError(
            f"{path} is truncated: header says {n} images of {h}x{w} ({16 + n * h * w} bytes), "
            f"file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)


def read_idx_labels(images_path: Path) -> np.ndarray | None:
    """Labels of an IDX image file from its sibling ``*-labels-idx1-ubyte[.gz]``, or None."""
    stem = IDX_LABELS.sub("", images_path.name)
    for suffix in ("-labels-idx1-ubyte.gz", "-labels-idx1-ubyte"):
        p = images_path.with_name(stem + suffix)
        if p.is_file():
            raw = _read_maybe_gzip(p)
            if int.from_bytes(raw[:4], "big") == 2049:
                return np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)
    return None


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (n, H, W) or (n, H, W, C) and optional labels from an .npz file.

    The images are the array named ``images``, ``x`` or ``X`` (else the only 3-D/4-D array); labels are
    ``labels`` or ``y`` when present.

    Raises:
        InputError: not a regular file, unreadable, no image array, an array of the wrong shape, 0 images,
            or images of 0 pixels.
    """
    path = regular_file(path, ".npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path} as .npz: {e}") from e
    key = next((k for k in NPZ_IMAGE_KEYS if k in arrays), None)
    if key is None:
        cands = [k for k, a in arrays.items() if a.ndim in (3, 4)]
        if len(cands) != 1:
            raise InputError(
                f"{path}: expected an image array named one of {list(NPZ_IMAGE_KEYS)}, found arrays {sorted(arrays)}"
            )
        key = cands[0]
    x = arrays[key]
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (1, 3))):
        raise InputError(f"{path}: array {key!r} has shape {x.shape}, expected (n, H, W) or (n, H, W, 1|3)")
    if len(x) == 0:
        raise InputError(f"{path} holds 0 images: array {key!r} has shape {x.shape}; give a file with images")
    if 0 in x.shape[1:3]:
        raise InputError(
            f"{path}: array {key!r} has shape {x.shape}: images of {x.shape[1]}x{x.shape[2]} pixels, "
            "an image needs at least 1x1 pixels"
        )
    if x.dtype.kind not in "uif":
        raise InputError(f"{path}: array {key!r} has dtype {x.dtype}, expected integers or floats")
    lab = next((arrays[k] for k in NPZ_LABEL_KEYS if k in arrays), None)
    if lab is not None and len(lab) != len(x):
        lab = None
    return x, (None if lab is None else np.asarray(lab).astype(np.int64))
