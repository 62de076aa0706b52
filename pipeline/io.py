"""Reading tables: CSV, Parquet and (for benchmarks) .npz with arrays X and y."""

from __future__ import annotations

import hashlib
import re
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
BOM = "\ufeff"
# pandas' default missing-value markers: applied to feature columns, never to id columns (kept verbatim).
NA_TEXT = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
           "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


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
        InputError: the file does not exist, is empty, is not UTF-8 text, cannot be parsed, has
            duplicate column names, or has an unknown suffix.

    A UTF-8 byte-order mark is stripped. Id columns are kept verbatim (``NA`` or an empty cell
    stays text); in other columns the usual markers (empty, ``NA``, ``NaN``, ``null``...) are missing.
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
            df = _read_csv(p, "\t" if suffix == ".tsv" else ",", str_columns)
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
    except UnicodeDecodeError as e:
        raise InputError(f"cannot read {p}: {_not_utf8(p)}") from e
    except (pd.errors.ParserError, ValueError, OSError) as e:
        raise InputError(f"cannot read {p}: {_parser_message(e)}") from e
    if len(df.columns) and isinstance(df.columns[0], str) and df.columns[0].startswith(BOM):
        df = df.rename(columns={df.columns[0]: df.columns[0].lstrip(BOM)})  # a BOM that pandas left in place
    _check_duplicates(p, [str(c) for c in df.columns])
    return df


def _read_csv(p: Path, sep: str, str_columns: Sequence[str]) -> pd.DataFrame:
    # The raw header first: pandas would rename duplicate names (a, a.1) and hide the mistake.
    header = pd.read_csv(p, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
    header = [str(h) for h in header]
    if header and header[0].startswith(BOM):
        header[0] = header[0].lstrip(BOM)
    _check_duplicates(p, header)
    ids = [c for c in str_columns if c in header]
    if not ids:
        return pd.read_csv(p, sep=sep)
    names = [h or f"Unnamed: {i}" for i, h in enumerate(header)]  # pandas' names for empty header cells
    na = {c: NA_TEXT for c in names if c not in ids}
    return pd.read_csv(p, sep=sep, dtype=dict.fromkeys(ids, "string"), keep_default_na=False, na_values=na)


def _check_duplicates(p: Path, names: list[str]) -> None:
    seen: set[str] = set()
    dups = sorted({n for n in names if n in seen or seen.add(n)})
    if dups:
        raise InputError(f"duplicate column names in {p}: {dups}: each column needs its own name")


def _not_utf8(p: Path) -> str:
    """Where the first byte that is not UTF-8 is (pandas reports an offset inside its read buffer)."""
    data = p.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return (f"not UTF-8 text: byte 0x{data[e.start]:02x} at line {line} (byte offset {e.start}) "
                "is not valid UTF-8: save the file as UTF-8")
    return "not UTF-8 text: save the file as UTF-8"


def _parser_message(e: Exception) -> str:
    """pandas' parser errors as one line in the user's terms (file lines are 1-based)."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    if m := re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text):
        return (f"line {m[2]} has {m[3]} fields but the header has {m[1]}: "
                "quote values that contain the delimiter")
    if "Parquet magic bytes not found" in text or "Parquet file size is 0" in text:
        return "not a readable Parquet file (truncated or corrupt: its footer is missing)"
    first = re.sub(r"^Could not open Parquet input source '[^']*': ", "not a readable Parquet file: ", first)
    if m := re.search(r"EOF inside string starting at row (\d+)", text):
        return f"a quoted value starting on line {int(m[1]) + 1} is never closed (unbalanced '\"')"
    return first


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
