"""Reading tables: CSV, Parquet and (for benchmarks) .npz with arrays X and y.

``read_table`` reads a whole file; ``iter_table`` streams it in chunks of rows with the same
parsing rules (scoring uses it, so that memory stays bounded whatever the file size).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.paths import regular_file
from pipeline.errors import InputError

CSV_SUFFIXES = {".csv", ".txt", ".tsv"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
NPZ_SUFFIXES = {".npz"}
SUPPORTED = sorted(CSV_SUFFIXES | PARQUET_SUFFIXES | NPZ_SUFFIXES)
NPZ_LABEL = "label"
BOM = "\ufeff"
# pandas' default missing-value markers: applied to feature columns, never to id columns (kept verbatim).
NA_TEXT = [
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes.

    Raises:
        InputError: ``path`` is not a regular file (opening a FIFO would block).
    """
    h = hashlib.sha256()
    with open(regular_file(path, "input file"), "rb") as f:
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
    p = _check_file(path)
    suffix = p.suffix.lower()
    try:
        if suffix in CSV_SUFFIXES:
            df = _read_csv(p, csv_delimiter(p), str_columns)
        elif suffix in PARQUET_SUFFIXES:
            df = pd.read_parquet(p)
            for c in str_columns:
                if c in df.columns:
                    df[c] = df[c].astype("string")
        else:
            df = _read_npz(p)
    except Exception as e:
        err = _read_error(p, e)
        if err is e:
            raise
        raise err from e
    return _checked_columns(p, df)


def _check_file(path: str | Path) -> Path:
    """The path, once it names a non-empty regular file of a supported type (else InputError).

    Checked with ``stat``, before any open: a FIFO, socket or device is refused (opening a FIFO blocks).
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"expected a file, got a directory: {p}")
    regular_file(p, "input file")
    suffix = p.suffix.lower()
    if suffix not in CSV_SUFFIXES | PARQUET_SUFFIXES | NPZ_SUFFIXES:
        raise InputError(f"unsupported file type {suffix or '(none)'!r} for {p}: expected one of {SUPPORTED}")
    if p.stat().st_size == 0:
        raise InputError(f"input file is empty (0 bytes): {p}")
    return p


def _read_error(p: Path, e: Exception) -> Exception:
    """A reader's exception as the InputError a user sees (other exceptions pass through)."""
    if isinstance(e, InputError):
        return e
    if isinstance(e, pd.errors.EmptyDataError):
        return InputError(f"input file has no columns: {p}")
    if isinstance(e, UnicodeDecodeError):
        return InputError(f"cannot read {p}: {_not_utf8(p)}")
    if isinstance(e, pd.errors.ParserError | ValueError | OSError):
        return InputError(f"cannot read {p}: {_parser_message(e)}")
    return e


def _checked_columns(p: Path, df: pd.DataFrame) -> pd.DataFrame:
    if len(df.columns) and isinstance(df.columns[0], str) and df.columns[0].startswith(BOM):
        df = df.rename(columns={df.columns[0]: df.columns[0].lstrip(BOM)})  # a BOM that pandas left in place
    _check_duplicates(p, [str(c) for c in df.columns])
    return df


def iter_table(
    path: str | Path,
    str_columns: Sequence[str] = (),
    chunk_rows: int = 65536,
    position: Callable[[float], None] | None = None,
) -> Iterator[pd.DataFrame]:
    """Stream a CSV, Parquet or .npz file as DataFrames of at most ``chunk_rows`` rows, in order.

    Parsing is exactly :func:`read_table`'s (same reader options, id columns verbatim, same error
    messages; parser errors name the file's line, counted over the whole file). Each chunk's index
    is the rows' 0-based position in the file. A file with a header only yields one empty frame.

    CSV goes through pandas' chunked C reader rather than ``pyarrow.csv.open_csv``: it keeps the
    non-streaming reader's semantics (NA markers, numbers-as-text, per-column types decided per
    chunk and then validated), which byte-identical reports need; pyarrow's streaming reader fixes
    column types from the first block and fails on a later block instead. Parquet streams record
    batches with ``pyarrow.parquet.ParquetFile.iter_batches``.

    Args:
        position: called after each chunk with the share of the file read so far, in [0, 1].

    Raises:
        InputError: as :func:`read_table`, possibly after some chunks were yielded.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows!r}")
    p = _check_file(path)
    suffix = p.suffix.lower()
    chunks = (
        _iter_csv(p, csv_delimiter(p), str_columns, chunk_rows, position)
        if suffix in CSV_SUFFIXES
        else _iter_parquet(p, str_columns, chunk_rows, position)
        if suffix in PARQUET_SUFFIXES
        else iter([read_table(p, str_columns)])
    )
    start = 0
    while True:
        try:
            df = next(chunks)
        except StopIteration:
            return
        except Exception as e:
            err = _read_error(p, e)
            if err is e:
                raise
            raise err from e
        df = _checked_columns(p, df) if start == 0 else df
        df.index = pd.RangeIndex(start, start + len(df))
        start += len(df)
        yield df


def _iter_csv(
    p: Path, sep: str, str_columns: Sequence[str], chunk_rows: int, position: Callable[[float], None] | None
) -> Iterator[pd.DataFrame]:
    size = max(p.stat().st_size, 1)
    with open(p, "rb") as f:
        header = _csv_header(p, sep)
        ids = [c for c in str_columns if c in header]
        options: dict = {"sep": sep, "chunksize": chunk_rows, "encoding": "utf-8"}
        if ids:
            names = [h or f"Unnamed: {i}" for i, h in enumerate(header)]
            options.update(
                dtype=dict.fromkeys(ids, "string"),
                keep_default_na=False,
                na_values={c: NA_TEXT for c in names if c not in ids},
            )
        with pd.read_csv(f, **options) as reader:
            for df in reader:
                if position is not None:
                    position(min(f.tell() / size, 1.0))
                yield df


def _iter_parquet(
    p: Path, str_columns: Sequence[str], chunk_rows: int, position: Callable[[float], None] | None
) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetFile(p) as pf:
        total = max(pf.metadata.num_rows, 1)
        done = 0
        first = True
        for batch in pf.iter_batches(batch_size=chunk_rows):
            yield _parquet_frame(pa.Table.from_batches([batch]), str_columns)
            first = False
            done += batch.num_rows
            if position is not None:
                position(min(done / total, 1.0))
        if first:  # no rows: one empty frame, so that the columns are checked
            yield _parquet_frame(pf.schema_arrow.empty_table(), str_columns)


def _parquet_frame(table, str_columns: Sequence[str]) -> pd.DataFrame:
    df = table.to_pandas()
    for c in str_columns:
        if c in df.columns:
            df[c] = df[c].astype("string")
    return df


DELIMITERS = (",", ";", "\t", "|")


def csv_delimiter(p: Path) -> str:
    """The delimiter of a CSV file, from its header line: the one of ``, ; tab |`` that occurs most often
    outside quotes (a comma on a tie or when none occurs; a tab for ``.tsv``)."""
    default = "\t" if p.suffix.lower() == ".tsv" else ","
    with open(p, "rb") as f:
        line = f.readline(1 << 16).decode("utf-8", errors="replace")
    outside = re.sub(r'"[^"]*"', "", line)
    counts = {d: outside.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: (counts[d], d == default))
    return best if counts[best] > counts[default] else default


def read_header(path: str | Path) -> list[str] | None:
    """The column names of a CSV or Parquet file, read without its rows; None for other files (.npz).

    Raises:
        InputError: as :func:`read_table`: a missing or unreadable file, duplicate column names.
    """
    p = _check_file(path)
    suffix = p.suffix.lower()
    try:
        if suffix in CSV_SUFFIXES:
            return _csv_header(p, csv_delimiter(p))
        if suffix in PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            return [str(n) for n in pq.read_schema(p).names]
    except Exception as e:
        err = _read_error(p, e)
        if err is e:
            raise
        raise err from e
    return None


def _csv_header(p: Path, sep: str) -> list[str]:
    """The raw header: pandas would rename duplicate names (a, a.1) and hide the mistake."""
    header = pd.read_csv(p, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
    header = [str(h) for h in header]
    if header and header[0].startswith(BOM):
        header[0] = header[0].lstrip(BOM)
    _check_duplicates(p, header)
    return header


def _read_csv(p: Path, sep: str, str_columns: Sequence[str]) -> pd.DataFrame:
    header = _csv_header(p, sep)
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
        return (
            f"not UTF-8 text: byte 0x{data[e.start]:02x} at line {line} (byte offset {e.start}) "
            "is not valid UTF-8: save the file as UTF-8"
        )
    return "not UTF-8 text: save the file as UTF-8"


def _parser_message(e: Exception) -> str:
    """pandas' parser errors as one line in the user's terms (file lines are 1-based)."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    if m := re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text):
        return f"line {m[2]} has {m[3]} fields but the header has {m[1]}: quote values that contain the delimiter"
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
