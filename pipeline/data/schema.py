"""The data contract: which columns are numeric, categorical, ids or the label.

Inferred from the training data, saved with the model and enforced at scoring.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.split import MIN_ROWS
from pipeline.errors import SchemaError
from vae.config import Serialisable

log = logging.getLogger(__name__)

# A text column with more distinct values than this (and mostly unique) looks like an identifier.
MAX_CATEGORIES = 200


@dataclass(frozen=True)
class Schema(Serialisable):
    """Column roles. Feature order is the order the model sees them in."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    id_columns: tuple[str, ...] = ()
    label_column: str | None = None

    @property
    def features(self) -> tuple[str, ...]:
        return self.numeric + self.categorical

    def check_columns(self, columns: list[str], source: str = "input", require_ids: bool = True) -> None:
        """Check a table's column names (its header) against the schema.

        Raises:
            SchemaError: a column the model needs is missing (with a hint when the names suggest why).
        """
        required = [*self.features, *(self.id_columns if require_ids else ())]
        missing = [c for c in required if c not in columns]
        if missing:
            expects = required if len(required) <= 12 else [*required[:12], f"... {len(required)} in all"]
            raise SchemaError(
                f"{source}: missing column(s) {missing}; the model expects {expects}"
                f"{missing_columns_hint(columns, missing, required)}"
            )

    def validate(self, df: pd.DataFrame, source: str = "input", require_ids: bool = True) -> pd.DataFrame:
        """Check ``df`` against the schema and return its feature columns, typed.

        Numeric columns come back as float64 (NaN where missing); categorical columns as
        object arrays of strings (NaN where missing). Extra columns are ignored with a warning.
        Id columns are required only when ``require_ids`` (reports need them, scores do not).

        Raises:
            SchemaError: a column is missing, or a numeric column holds a non-numeric value
                or an infinite one (the message names the column, the first bad row and value).
        """
        self.check_columns([str(c) for c in df.columns], source, require_ids)
        known = {*self.features, *self.id_columns, *([self.label_column] if self.label_column else [])}
        extra = [str(c) for c in df.columns if c not in known]
        if extra:
            log.warning("%s: ignoring column(s) the model was not trained on: %s", source, extra)
        out = pd.DataFrame(index=df.index)
        for c in self.numeric:
            out[c] = to_numeric(df[c], c, source)
        for c in self.categorical:
            out[c] = to_category_text(df[c])
        return out


_DELIMITERS = ((";", "';'-separated"), ("\t", "tab-separated"), ("|", "'|'-separated"))


def missing_columns_hint(columns: list[str], missing: list[str], required: list[str]) -> str:
    """Why expected columns may be missing: another delimiter, no header line, or a near-miss name."""
    if len(columns) == 1 and len(required) > 1:
        seen = [name for sep, name in _DELIMITERS if sep in columns[0]]
        looks = f" (the header looks {seen[0]})" if seen else ""
        return f"; the file has a single column {columns[0][:80]!r}: is the delimiter ','?{looks}"
    if len(missing) == len(required) and any(_parses_as_number(c) for c in columns):
        return f"; does the file start with a header line? Its first line reads {columns[:6]}"
    near = [
        (m, c) for m in missing for c in columns if c not in required and c.strip().casefold() == m.strip().casefold()
    ]
    if near:
        pairs = ", ".join(f"{c!r} for {m!r}" for m, c in near)
        return f"; found {pairs}: column names are case- and space-sensitive"
    import difflib

    unexpected = [c for c in columns if c not in required]
    close = [(m, difflib.get_close_matches(m, unexpected, n=1, cutoff=0.75)) for m in missing]
    guesses = ", ".join(f"{c[0]!r} -> {m!r}" for m, c in close if c)
    return f"; did you mean {guesses}? (rename the column in the file)" if guesses else ""


def _parses_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def to_numeric(col: pd.Series, name: str, source: str = "input") -> pd.Series:
    """``col`` as float64; a value that is not a number, or is infinite, raises SchemaError."""
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
        values = col.astype("float64")
    else:
        values = pd.to_numeric(col, errors="coerce").astype("float64")
        bad = values.isna().to_numpy() & col.notna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise SchemaError(f"{source}: column {name!r} must be numeric, but row {i} holds {col.iloc[i]!r}")
    inf = np.isinf(values.to_numpy())
    if inf.any():
        i = int(np.argmax(inf))
        raise SchemaError(f"{source}: column {name!r} must be finite, but row {i} holds {float(values.iloc[i])!r}")
    return values


def category_text(v: Any) -> Any:
    """The text of one category value: 3.0 and 3 both become '3'; NaN stays NaN."""
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return np.nan
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v)


def to_category_text(col: pd.Series) -> pd.Series:
    return col.astype(object).map(category_text).astype(object)


def _is_numeric(col: pd.Series) -> bool:
    """A numeric or boolean dtype, or text whose every value parses as a number."""
    if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        return True
    return bool(pd.to_numeric(col.dropna(), errors="coerce").notna().all())


def check_named_columns(columns: list[str], named: Sequence[str | None], source: str) -> None:
    """Check that every column an option names (ids, label, categorical, segment) is in the table.

    Raises:
        SchemaError: a named column is not among ``columns``.
    """
    absent = [c for c in named if c is not None and c not in columns]
    if absent:
        raise SchemaError(f"{source}: column(s) {absent} not found; columns are {columns}")


def infer_schema(
    df: pd.DataFrame,
    id_columns: Sequence[str] = (),
    label_column: str | None = None,
    categorical_columns: Sequence[str] = (),
    source: str = "training data",
) -> Schema:
    """Infer column roles from training data.

    Numeric dtypes (and text columns whose every value parses as a number) are numeric;
    other columns are categorical. Columns named in ``categorical_columns`` are categorical
    whatever their dtype.

    Raises:
        SchemaError: there are no rows, a named column does not exist, a column is all missing, or a text
            column looks like an identifier (too many distinct values to model).
    """
    if len(df) == 0:
        raise SchemaError(f"{source} has no rows (a header line only?): training needs at least {MIN_ROWS} rows")
    check_named_columns([str(c) for c in df.columns], [*id_columns, *categorical_columns, label_column], source)
    overlap = set(id_columns) & ({label_column} | set(categorical_columns))
    if overlap:
        raise SchemaError(f"{source}: column(s) {sorted(overlap)} cannot be both id and feature/label columns")
    numeric: list[str] = []
    categorical: list[str] = []
    for c in df.columns:
        if c in id_columns or c == label_column:
            continue
        name = str(c)
        col = df[c]
        if col.isna().all():
            raise SchemaError(
                f"{source}: column {name!r} has no values (all missing): drop it or pass it with --id-columns"
            )
        if c in categorical_columns:
            categorical.append(name)
        elif _is_numeric(col):
            numeric.append(name)
        else:
            n_unique = col.nunique(dropna=True)
            if n_unique > MAX_CATEGORIES and n_unique > 0.5 * col.notna().sum():
                raise SchemaError(
                    f"{source}: column {name!r} looks like an identifier or free text ({n_unique} distinct "
                    f"values in {len(col)} rows): pass it with --id-columns to carry it into the report"
                )
            categorical.append(name)
    if not numeric and not categorical:
        raise SchemaError(f"{source}: no feature columns left after removing id and label columns")
    return Schema(
        numeric=tuple(numeric),
        categorical=tuple(categorical),
        id_columns=tuple(id_columns),
        label_column=label_column,
    )


def most_extreme(
    features: pd.DataFrame,
    columns: Sequence[str],
    center: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> tuple[str, int, float, float] | None:
    """The numeric cell farthest from ``center`` in units of ``scale``: (column, row, value, distance).

    Args:
        features: validated features (n_rows, ...); rows are reported as 0-based positions.
        columns: the numeric columns to look at.
        center, scale: (n_columns,) per column; default the median and IQR / 1.349 (robust std) of ``features``.
    """
    if not columns or len(features) == 0:
        return None
    x = features[list(columns)].to_numpy(dtype=np.float64)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: their centre falls back to 0
        if center is None:
            center = np.nan_to_num(np.nanmedian(x, axis=0)) if np.isfinite(x).any() else np.zeros(x.shape[1])
        if scale is None:
            q = np.nan_to_num(np.nanquantile(x, [0.25, 0.75], axis=0)) if np.isfinite(x).any() else np.ones((2, 1))
            scale = (q[1] - q[0]) / 1.349
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        d = np.abs(x / scale - center / scale)  # never forms x - center, which overflows near 1e308
    d = np.where(np.isnan(d), -1.0, d)
    row, j = np.unravel_index(int(np.argmax(d)), d.shape)
    return str(columns[j]), int(row), float(x[row, j]), float(d[row, j])
