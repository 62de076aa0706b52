"""Reading images: folders (searched recursively), lists and globs of files, IDX and .npz arrays.

Every input image becomes one entry of an :class:`ImageSet`, in a stable order, with its path
relative to the input's root; an image that cannot be decoded keeps its entry, with an ``error``
text and no pixels, so a batch never stops on one bad file and no image disappears.

Conversion rule (documented in docs/images.md): pixels become float32 in [0, 1] (8-bit values / 255,
16-bit / 65535). Mode: a model is grey (1 channel) or RGB (3 channels); grey images are
converted with Pillow's ``convert("L")`` (ITU-R 601-2 luma), RGB with ``convert("RGB")`` (a grey image
is repeated on the 3 channels); an alpha channel is dropped. Size: an image of another size is resized
to the model's (height, width) with Pillow's bilinear filter, ignoring the aspect ratio.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.errors import InputError
from pipeline.paths import regular_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
ARRAY_SUFFIXES = (".npz",)
IDX_PATTERN = re.compile(r"-idx3-ubyte(\.gz)?$")
IDX_LABELS = re.compile(r"-images-idx3-ubyte(\.gz)?$")
_GLOB_CHARS = re.compile(r"[*?\[]")
NPZ_IMAGE_KEYS = ("images", "x", "X")
NPZ_LABEL_KEYS = ("labels", "y")


@dataclass
class ImageSet:
    """Images of one batch, each entry in input order.

    Attributes:
        root: the folder paths are relative to (or the array file).
        paths: (n,) path of each image relative to ``root`` (``file#index`` for array files).
        pixels: (n_ok, C, H, W) float32 in [0, 1], for the decoded entries only, in order.
        errors: (n,) '' for a decoded image, else why it could not be read.
        labels: (n,) int labels from an array file's labels, or None.
        notes: conversions applied (resized / converted images), for the summary.
    """

    root: Path
    paths: list[str]
    pixels: np.ndarray
    errors: list[str]
    labels: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> np.ndarray:
        """(n,) bool: the entries with pixels."""
        return np.array([not e for e in self.errors], dtype=bool)

    def __len__(self) -> int:
        return len(self.paths)


def is_array_file(p: Path) -> bool:
    """An IDX image file (``*-idx3-ubyte[.gz]``) or an ``.npz`` array file."""
    return bool(IDX_PATTERN.search(p.name)) or p.suffix.lower() in ARRAY_SUFFIXES


def is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def looks_like_images(value: str | Path) -> bool:
    """Whether an input names images: a folder (not one of tables only), a glob, an image file, an IDX or .npz file."""
    text = str(value)
    p = Path(text)
    if _GLOB_CHARS.search(text) and not p.exists():  # a glob: images unless it names another file type
        return is_image_file(p) or not p.suffix or bool(_GLOB_CHARS.search(p.suffix))
    if p.is_dir():  # a folder of images, unless it holds tables and no image (a partitioned dataset)
        files = [q for q in p.rglob("*") if q.is_file()]
        tables = any(q.suffix.lower() in TABLE_SUFFIXES for q in files)
        return not tables or any(is_image_file(q) for q in files)
    return is_image_file(p) or is_array_file(p)


TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def _glob_root(pattern: str) -> Path:
    """The fixed folder part of a glob pattern (before the first component with a wildcard)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, searched recursively, sorted by relative path (hidden files skipped)."""
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file() and is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def resolve_inputs(inputs: Sequence[str | Path]) -> tuple[Path, list[Path]]:
    """The root and the image files of loose inputs (image files and glob patterns), each file once.

    A named file must be a regular file (a FIFO would block the reader); a glob keeps the regular files it
    matches, as a folder's walk does.

    Raises:
        InputError: a path does not exist, is not an image file or not a regular file, or a glob matches
            no image.
    """
    files: list[Path] = []
    for item in inputs:
        text = str(item)
        if _GLOB_CHARS.search(text) and not Path(text).exists():
            matched = [
                Path(m) for m in sorted(glob.glob(text, recursive=True)) if is_image_file(Path(m)) and Path(m).is_file()
            ]
            if not matched:
                raise InputError(f"glob {text!r} matches no {'/'.join(IMAGE_SUFFIXES)} image")
            files += matched
            continue
        p = Path(text)
        if not p.exists():
            raise InputError(f"input not found: {p}")
        if not is_image_file(p):
            raise InputError(
                f"unsupported image file {p}: expected one of {', '.join(IMAGE_SUFFIXES)}, "
                "a folder of them, or an IDX/.npz array file"
            )
        files.append(regular_file(p, "image file"))
    seen, unique = set(), []
    for f in files:  # an image named twice (a file and a glob) is read once
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    parents = [f.resolve().parent for f in unique]
    root = Path(*_common_parts(parents)) if parents else Path(".")
    return root, unique


def _common_parts(paths: Iterable[Path]) -> tuple[str, ...]:
    parts = [p.parts for p in paths]
    common = []
    for group in zip(*parts, strict=False):
        if len(set(group)) != 1:
            break
        common.append(group[0])
    return tuple(common)


# ------------------------------------------------------------------ decoding
def _to_unit(arr: np.ndarray) -> np.ndarray:
    """Pixels as float32 in [0, 1]."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16 or (arr.dtype.kind in "iu" and arr.max(initial=0) > 255):
        return np.clip(arr.astype(np.float32) / 65535.0, 0.0, 1.0)
    if arr.dtype.kind in "iu":
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


IMAGE_FORMATS = ("PNG", "JPEG", "BMP")
"""Pillow formats accepted from image bytes (:func:`decode_image_bytes`): those of ``IMAGE_SUFFIXES``."""


def decode_image(
    source: Path | BinaryIO,
    mode: str | None,
    size: tuple[int, int] | None,
    formats: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """One image (a file's path, or a binary file object) as (C, H, W) float32 in [0, 1], converted to ``mode``
    ("L" or "RGB") and ``size`` (H, W).

    With ``mode`` None the image keeps grey (1 channel) or colour (3 channels) as it is; with ``size`` None
    it keeps its size; with ``formats`` (Pillow format names) other formats are not tried. Returns the pixels
    and the conversions applied ("resized 30x30->28x28", ...).

    Raises:
        OSError, ValueError: the image cannot be decoded (Pillow's error).
    """
    from PIL import Image

    notes = []
    with Image.open(source, formats=None if formats is None else list(formats)) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit or float grey: scale by hand
            grey = Image.fromarray((_to_unit(np.asarray(im)) * 255.0 + 0.5).astype(np.uint8))
            im = grey
        target = mode or ("L" if _is_grey(im) else "RGB")
        if im.mode != target:
            if im.mode not in ("L", "1") or target != "L":
                notes.append(f"converted {im.mode}->{target}")
            im = im.convert(target)
        if size is not None and (im.height, im.width) != tuple(size):
            notes.append(f"resized {im.height}x{im.width}->{size[0]}x{size[1]}")
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arr = _to_unit(np.asarray(im))
    arr = arr[None] if arr.ndim == 2 else np.transpose(arr, (2, 0, 1))
    return np.ascontiguousarray(arr, dtype=np.float32), notes


def decode_error(e: Exception) -> str:
    """One line saying why Pillow could not decode an image: its error's type and first line."""
    text = str(e).splitlines()[0][:200] if str(e) else ""
    return f"cannot decode image: {type(e).__name__}: {text}"


def decode_image_bytes(data: bytes, mode: str | None, size: tuple[int, int] | None) -> tuple[np.ndarray, list[str]]:
    """One PNG, JPEG or BMP image from its encoded bytes, converted as :func:`decode_image` converts a file.

    Raises:
        OSError, ValueError: the bytes are not such an image (Pillow's error).
    """
    return decode_image(io.BytesIO(data), mode, size, IMAGE_FORMATS)


def _is_grey(im: object) -> bool:
    """Grey modes, or a colour image whose three channels are equal everywhere."""
    mode = im.mode  # type: ignore[attr-defined]
    if mode in ("1", "L", "LA", "I", "F"):
        return True
    rgb = np.asarray(im.convert("RGB"))  # type: ignore[attr-defined]
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


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


def _arrays_to_set(
    root: Path, x: np.ndarray, labels: np.ndarray | None, mode: str | None, size: tuple[int, int] | None
) -> ImageSet:
    """(n, H, W[, C]) pixel array -> ImageSet, converted to mode / size with the same rule as files."""
    from PIL import Image

    unit = _to_unit(x)
    unit = unit[:, None] if unit.ndim == 3 else np.transpose(unit, (0, 3, 1, 2))
    notes = []
    if mode == "RGB" and unit.shape[1] == 1:
        unit, notes = np.repeat(unit, 3, axis=1), [*notes, f"converted L->RGB ({len(unit)} images)"]
    elif mode == "L" and unit.shape[1] == 3:  # ITU-R 601-2 luma, as Pillow's convert("L")
        unit = (0.299 * unit[:, 0] + 0.587 * unit[:, 1] + 0.114 * unit[:, 2])[:, None]
        notes.append(f"converted RGB->L ({len(unit)} images)")
    if size is not None and unit.shape[2:] != tuple(size):
        notes.append(f"resized {unit.shape[2]}x{unit.shape[3]}->{size[0]}x{size[1]} ({len(unit)} images)")
        unit = np.stack(
            [
                np.stack(
                    [
                        np.asarray(Image.fromarray(ch).resize((size[1], size[0]), Image.Resampling.BILINEAR))
                        for ch in img
                    ]
                )
                for img in unit
            ]
        ).astype(np.float32)
        unit = np.clip(unit, 0.0, 1.0)
    name = root.name
    paths = [f"{name}#{i}" for i in range(len(unit))]
    return ImageSet(root, paths, np.ascontiguousarray(unit, dtype=np.float32), [""] * len(unit), labels, notes)


def read_images(
    source: str | Path | Sequence[str | Path], mode: str | None = None, size: tuple[int, int] | None = None
) -> ImageSet:
    """Read one batch of images.

    Args:
        source: a folder (searched recursively for PNG/JPEG/BMP), an IDX (``*-idx3-ubyte[.gz]``) or .npz
            array file, or a list of image files and glob patterns (one batch, paths relative to their
            common folder).
        mode: "L" (grey) or "RGB" to convert to; None keeps each image's own (training decides it).
        size: (height, width) to resize to; None keeps each image's own size.

    Raises:
        InputError: a path that does not exist, an empty folder, a glob that matches nothing, a bad array file.
    """
    if mode not in (None, "L", "RGB"):
        raise InputError(f"image mode must be 'L' (grey) or 'RGB', got {mode!r}")
    items = [source] if isinstance(source, str | Path) else list(source)
    if not items:
        raise InputError("no image input given: expected a folder, image files, a glob, or an IDX/.npz file")
    if len(items) == 1 and not _GLOB_CHARS.search(str(items[0])):
        p = Path(items[0])
        if not p.exists():
            raise InputError(f"input not found: {p}")
        if p.is_dir():
            files = image_files(p)
            if not files:
                raise InputError(f"folder {p} holds no {'/'.join(IMAGE_SUFFIXES)} images (searched recursively)")
            return _decode_files(p, files, mode, size)
        if IDX_PATTERN.search(p.name):
            return _arrays_to_set(p, read_idx(p), read_idx_labels(p), mode, size)
        if p.suffix.lower() in ARRAY_SUFFIXES:
            x, labels = read_npz(p)
            return _arrays_to_set(p, x, labels, mode, size)
    root, files = resolve_inputs(items)
    return _decode_files(root, files, mode, size)


def _decode_files(root: Path, files: list[Path], mode: str | None, size: tuple[int, int] | None) -> ImageSet:
    root_abs = root.resolve()
    paths, pixels, errors, counts = [], [], [], Counter()
    for f in files:
        rel = f.resolve().relative_to(root_abs).as_posix() if f.resolve().is_relative_to(root_abs) else str(f)
        paths.append(rel)
        try:
            arr, notes = decode_image(f, mode, size)
        except Exception as e:  # Pillow raises many types for a bad file: the row carries the reason
            errors.append(decode_error(e))
            continue
        for n in notes:
            counts[n] += 1
        pixels.append(arr)
        errors.append("")
    stacked = _stack(pixels)
    notes = [f"{n} ({k} images)" for n, k in sorted(counts.items())]
    bad = sum(1 for e in errors if e)
    if bad:
        log.warning("%s: %d of %d images could not be decoded", root, bad, len(files))
    return ImageSet(root, paths, stacked, errors, None, notes)


def _stack(pixels: list[np.ndarray]) -> np.ndarray:
    """Stack same-shape (C, H, W) arrays; mixed shapes stay a 1-D object array (read with a size to fix)."""
    if not pixels:
        return np.zeros((0, 1, 1, 1), dtype=np.float32)
    if len({a.shape for a in pixels}) == 1:
        return np.stack(pixels)
    out = np.empty(len(pixels), dtype=object)
    for i, a in enumerate(pixels):
        out[i] = a
    return out


def dominant_format(images: ImageSet) -> tuple[str, tuple[int, int]]:
    """The mode and (H, W) a model trained on ``images`` uses: RGB if any image has colour, else L; the
    most common size (ties: the larger)."""
    arrays = list(images.pixels)
    if not arrays:
        raise InputError(
            f"{images.root}: none of the {len(images)} images could be decoded "
            f"(first error: {next((e for e in images.errors if e), '')})"
        )
    mode = "RGB" if any(a.shape[0] == 3 for a in arrays) else "L"
    sizes = Counter(a.shape[1:] for a in arrays)
    size = max(sizes, key=lambda s: (sizes[s], s[0] * s[1]))
    return mode, (int(size[0]), int(size[1]))


def digest(images: ImageSet) -> str:
    """sha256 of the batch: of the file for an array file, else of the (relative path, bytes) of each image."""
    h = hashlib.sha256()
    root = images.root
    if root.is_file():
        with open(root, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest()
    for rel in images.paths:
        p = root / rel
        h.update(rel.encode() + b"\0")
        try:
            h.update(p.read_bytes())
        except OSError:
            h.update(b"<unreadable>")
    return h.hexdigest()


def batch_name(source: str | Path | Sequence[str | Path]) -> str:
    """Name of a batch's report: the folder's name, the array file's stem, or ``images`` for files/globs."""
    items = [source] if isinstance(source, str | Path) else list(source)
    if len(items) == 1 and not _GLOB_CHARS.search(str(items[0])):
        p = Path(items[0])
        if p.is_dir():
            return p.resolve().name or "images"
        if is_array_file(p):
            return re.sub(r"\.gz$", "", p.name).removesuffix(".npz")
    return "images"


def read_training_images(source: str | Path | Sequence[str | Path]) -> ImageSet:
    """Read training images and bring them to one format: :func:`dominant_format` (mode, size).

    Images of another size or mode are converted by the module's rule (the summary's notes count them);
    undecodable images are left out of training and listed in ``errors``.

    Raises:
        InputError: as :func:`read_images`, or no image could be decoded.
    """
    images = read_images(source)
    mode, size = dominant_format(images)
    if images.pixels.dtype == object or images.pixels.shape[1:] != (1 if mode == "L" else 3, *size):
        images = read_images(source, mode=mode, size=size)
    return images
