"""Reading tables: CSV, Parquet and (for benchmarks) .npz with arrays X and y."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import InputError

CSV_SUFFIXES = {".csv", ".txt", ".tsv"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
NPZ_SUFFIXES = {".npz"}
SUPPORTED = sorted(CSV_SUFFIXES | PARQUET_SUFFIXES | NPZ_SUFFIXES)
NPZ_LABEL = "label"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_table(path: str | Path, str_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV, Parquet or .npz file into a DataFrame.

    Args:
        path: the file; its suffix picks the reader.
        str_columns: columns read as text, untouched (id columns keep leading zeros).

    Raises:
        InputError: the file does not exist, is empty, cannot be parsed, or has an unknown suffix.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input file not found: {p}")
    if p.is_dir():
        raise InputError(f"expected a file, got a directory: {p}")
    suffix = p.suffix.lower()
    if suffix not in CSV_SUFFIXES | PARQUET_SUFFIXES | NPZ_SUFFIXES:
        raise InputError(f"unsupported file type {suffix or '(none)'!r} for {p}: expected one of {SUPPORTED}")
    if p.stat().st_size == 0:
        raise InputError(f"input file is empty (0 bytes): {p}")
    try:
        if suffix in CSV_SUFFIXES:
            sep = "\t" if suffix == ".tsv" else ","
            dtype = dict.fromkeys(str_columns, "string")
            df = pd.read_csv(p, sep=sep, dtype=dtype or None, keep_default_na=True)
        elif suffix in PARQUET_SUFFIXES:
            df = pd.read_parquet(p)
            for c in str_columns:
                if c in df.columns:
                    df[c] = df[c].astype("string")
        else:
            df = _read_npz(p)
    except InputError:
        raise
    except pd.errors.EmptyDataError as e:
        raise InputError(f"input file has no columns: {p}") from e
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"cannot read {p}: {first}") from e
    if df.columns.duplicated().any():
        dups = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
        raise InputError(f"duplicate column names in {p}: {dups}")
    return df


def _read_npz(p: Path) -> pd.DataFrame:
    with np.load(p, allow_pickle=False) as data:
        if "X" not in data:
            raise InputError(f"{p} has no array 'X' (arrays: {sorted(data.files)})")
        x = np.asarray(data["X"])
        y = np.asarray(data["y"]) if "y" in data else None
    if x.ndim != 2:
        raise InputError(f"array X in {p} must be 2-D (rows, features), got shape {x.shape}")
    df = pd.DataFrame(x, columns=[f"x{j}" for j in range(x.shape[1])])
    if y is not None:
        df[NPZ_LABEL] = y.astype(np.int64)
    return df
