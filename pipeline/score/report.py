"""Anomaly reports: one CSV row per input row, in input order, written atomically."""

from __future__ import annotations

import glob
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

REPORT_SUFFIX = ".anomalies.csv"
# OWASP CSV-injection guidance: a cell starting with one of these can run as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def report_path(out_dir: str | Path, input_path: str | Path) -> Path:
    """``<out_dir>/<input stem>.anomalies.csv``."""
    return Path(out_dir) / f"{Path(input_path).stem}{REPORT_SUFFIX}"


# A plain signed decimal number ("-12.5", "+3e-4") is data, not a formula: it is left as it is.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# Temporary files of the atomic writer: ".<name>.<pid>.<random>.tmp" beside the target.
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


def neutralise_cell(v: object) -> object:
    """Prefix a text cell that a spreadsheet would run as a formula with a quote; numbers stay."""
    if isinstance(v, str) and v.startswith(_FORMULA_START) and not _NUMBER.fullmatch(v):
        return "'" + v
    return v


def build_report(
    df: pd.DataFrame,
    scores: np.ndarray,
    threshold: float,
    id_columns: Sequence[str] = (),
    is_anomaly: np.ndarray | None = None,
    p_value: np.ndarray | None = None,
    q_value: np.ndarray | None = None,
) -> pd.DataFrame:
    """The report frame: row, id columns, score, threshold, is_anomaly (0/1), then p_value / q_value if given.

    Args:
        df: the input rows (n,), in input order.
        scores: (n,) anomaly scores, higher = more anomalous.
        threshold: the score threshold of the flag rule.
        is_anomaly: (n,) 0/1 flags; default ``scores > threshold``.
    """
    if len(scores) != len(df):
        raise ValueError(f"got {len(scores)} scores for {len(df)} rows")
    out = pd.DataFrame({"row": np.arange(len(df), dtype=np.int64)})
    for c in id_columns:
        out[c] = df[c].to_numpy(dtype=object)
    out["score"] = np.asarray(scores, dtype=np.float64)
    out["threshold"] = float(threshold)
    flags = (out["score"] > threshold) if is_anomaly is None else np.asarray(is_anomaly)
    out["is_anomaly"] = np.asarray(flags, dtype=np.int64)
    if p_value is not None:
        out["p_value"] = np.asarray(p_value, dtype=np.float64)
    if q_value is not None:
        out["q_value"] = np.asarray(q_value, dtype=np.float64)
    return out


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[TextIO]:
    """Open a temporary file beside ``path``; on success fsync and rename it to ``path``.

    A reader never sees a partial file at ``path``; on failure the temporary file is removed. A
    process killed mid-write (SIGKILL, power loss) leaves ``.<name>.<pid>.<random>.tmp``: the next
    successful write of the same ``path`` removes those whose process is gone.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.{os.getpid()}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(p.parent)
    remove_stale_temporaries(p)


def _fsync_dir(d: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove temporary files of ``path`` left by writers that were killed; returns them.

    A temporary file whose writer process is still alive is kept (it may be about to rename it).
    """
    p = Path(path)
    removed = []
    for tmp in p.parent.glob(f".{glob.escape(p.name)}.*.tmp"):
        m = _TMP.match(tmp.name)
        if m and m["name"] == p.name and not _alive(int(m["pid"])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process's own leftovers are never in use after a rename
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_writer(path) as f:
        f.write(text)
    return Path(path)


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` as CSV to ``path`` atomically; the bytes depend only on the frame.

    Lines end with ``\n``; floats as ``%.9g``; missing values empty. Every text cell and column name that a
    spreadsheet would run as a formula gets a leading ``'`` (:func:`neutralise_cell`). A text cell is quoted when it
    holds ``,``, ``"``, ``\n`` or ``\r`` (Python's csv module, with ``\n`` line ends, would leave a
    lone ``\r`` unquoted and a reader would split the row there).
    """
    with atomic_writer(path) as f:
        f.write(csv_header(frame.columns))
        for start in range(0, len(frame), 100_000):
            f.write(csv_rows(frame.iloc[start : start + 100_000]))
    return Path(path)


def csv_header(columns: Sequence[object]) -> str:
    """The header line of :func:`write_csv_atomic` for these column names (neutralised as text cells are)."""
    return ",".join(_quote(str(neutralise_cell(str(c)))) for c in columns) + "\n"


def csv_rows(frame: pd.DataFrame) -> str:
    """The data lines of ``frame`` exactly as :func:`write_csv_atomic` writes them.

    Writing a file as ``csv_header`` + ``csv_rows`` of consecutive slices gives the same bytes as
    writing it whole: each cell's text depends only on its value and its column's dtype.
    """
    if len(frame) == 0:
        return ""
    columns = [_format_column(frame[c]) for c in frame.columns]
    return "".join([",".join(cells) + "\n" for cells in zip(*columns, strict=True)])


def _format_column(col: pd.Series) -> list[str]:
    """One column's CSV cells: floats as %.9g, integers as digits, text neutralised and quoted where needed."""
    if pd.api.types.is_float_dtype(col):
        x = col.to_numpy(dtype=np.float64)
        cells = [format(v, ".9g") for v in x.tolist()]  # the same text as "%.9g" % v
        for i in np.flatnonzero(np.isnan(x)).tolist():
            cells[i] = ""
        return cells
    if pd.api.types.is_integer_dtype(col) or pd.api.types.is_bool_dtype(col):
        return [str(v) for v in col.to_numpy(dtype=np.int64).tolist()]
    return ["" if _missing(v) else _quote(str(neutralise_cell(str(v)))) for v in col.to_numpy(dtype=object)]


def _missing(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


def _quote(text: str) -> str:
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text
