"""Decoding one image with Pillow into float32 pixels in [0, 1], converted to a mode and a size."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def to_unit(arr: np.ndarray) -> np.ndarray:
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
            grey = Image.fromarray((to_unit(np.asarray(im)) * 255.0 + 0.5).astype(np.uint8))
            im = grey
        target = mode or ("L" if _is_grey(im) else "RGB")
        if im.mode != target:
            if im.mode not in ("L", "1") or target != "L":
                notes.append(f"converted {im.mode}->{target}")
            im = im.convert(target)
        if size is not None and (im.height, im.width) != tuple(size):
            notes.append(f"resized {im.height}x{im.width}->{size[0]}x{size[1]}")
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arr = to_unit(np.asarray(im))
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
