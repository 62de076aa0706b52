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
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.image_arrays import ARRAY_SUFFIXES, IDX_PATTERN, read_idx, read_idx_labels, read_npz
from pipeline.data.image_decode import IMAGE_SUFFIXES, decode_error, decode_image, to_unit
from pipeline.data.paths import regular_file
from pipeline.errors import InputError

log = logging.getLogger(__name__)

_GLOB_CHARS = re.compile(r"[*?\[]")


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


def _arrays_to_set(
    root: Path, x: np.ndarray, labels: np.ndarray | None, mode: str | None, size: tuple[int, int] | None
) -> tuple[ImageSet, Counter[str]]:
    """(n, H, W[, C]) pixel array -> ImageSet, converted to mode / size with the same rule as files, and the
    conversions' counts."""
    from PIL import Image

    unit = to_unit(x)
    unit = unit[:, None] if unit.ndim == 3 else np.transpose(unit, (0, 3, 1, 2))
    counts = Counter[str]()
    if mode == "RGB" and unit.shape[1] == 1:
        unit, counts["converted L->RGB"] = np.repeat(unit, 3, axis=1), len(unit)
    elif mode == "L" and unit.shape[1] == 3:  # ITU-R 601-2 luma, as Pillow's convert("L")
        unit = (0.299 * unit[:, 0] + 0.587 * unit[:, 1] + 0.114 * unit[:, 2])[:, None]
        counts["converted RGB->L"] = len(unit)
    if size is not None and unit.shape[2:] != tuple(size):
        counts[f"resized {unit.shape[2]}x{unit.shape[3]}->{size[0]}x{size[1]}"] = len(unit)
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
    return ImageSet(root, paths, np.ascontiguousarray(unit, dtype=np.float32), [""] * len(unit), labels), counts


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
    root, files = list_images(source, mode)
    images, counts = _read_array(root, mode, size) if files is None else _decode_files(root, files, mode, size)
    images.notes = count_notes(counts)
    bad = sum(1 for e in images.errors if e)
    if bad:
        log.warning("%s: %d of %d images could not be decoded", root, bad, len(files))
    return images


def list_images(source: str | Path | Sequence[str | Path], mode: str | None = None) -> tuple[Path, list[Path] | None]:
    """The root of a batch and its image files, in the batch's order; None for an array file (the root).

    Raises:
        InputError: as :func:`read_images`, before any image is decoded.
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
            return p, files
        if is_array_file(p):
            return p, None
    return resolve_inputs(items)


def image_chunks(
    root: Path, files: list[Path] | None, mode: str | None, size: tuple[int, int] | None, images: int
) -> Iterator[tuple[ImageSet, Counter[str]]]:
    """The batch :func:`list_images` found, ``images`` entries at a time, with each chunk's conversion counts
    (an array file is read whole, then cut; its notes come with the first chunk)."""
    if files is None:
        whole, counts = _read_array(root, mode, size)
        for start in range(0, max(len(whole), 1), images):
            part = slice(start, start + images)
            labels = None if whole.labels is None else whole.labels[part]
            yield ImageSet(root, whole.paths[part], whole.pixels[part], whole.errors[part], labels), counts
            counts = Counter()
        return
    for start in range(0, len(files), images):
        yield _decode_files(root, files[start : start + images], mode, size)


def count_notes(counts: Counter[str]) -> list[str]:
    """The conversions applied to a batch, each with its count of images, for the summary."""
    return [f"{n} ({k} images)" for n, k in sorted(counts.items())]


def _read_array(p: Path, mode: str | None, size: tuple[int, int] | None) -> tuple[ImageSet, Counter[str]]:
    if IDX_PATTERN.search(p.name):
        return _arrays_to_set(p, read_idx(p), read_idx_labels(p), mode, size)
    x, labels = read_npz(p)
    return _arrays_to_set(p, x, labels, mode, size)


def _decode_files(
    root: Path, files: list[Path], mode: str | None, size: tuple[int, int] | None
) -> tuple[ImageSet, Counter[str]]:
    paths, pixels, errors, counts = relative_paths(root, files), [], [], Counter[str]()
    for f in files:
        try:
            arr, notes = decode_image(f, mode, size)
        except Exception as e:  # Pillow raises many types for a bad file: the row carries the reason
            errors.append(decode_error(e))
            continue
        for n in notes:
            counts[n] += 1
        pixels.append(arr)
        errors.append("")
    return ImageSet(root, paths, _stack(pixels), errors, None), counts


def relative_paths(root: Path, files: Sequence[Path]) -> list[str]:
    """Each file's path relative to ``root`` (as it is when outside it), as reports name it."""
    root_abs = root.resolve()
    out = []
    for f in files:
        resolved = f.resolve()
        out.append(resolved.relative_to(root_abs).as_posix() if resolved.is_relative_to(root_abs) else str(f))
    return out


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


def digest(root: Path, paths: Sequence[str]) -> str:
    """sha256 of a batch: of the file for an array file, else of the (relative path, bytes) of each image."""
    h = hashlib.sha256()
    if root.is_file():
        with open(root, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest()
    for rel in paths:
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
