"""The data contract: which columns are numeric, categorical, ids or the label.

Inferred from the training data, saved with the model and enforced at scoring.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import SchemaError

log = logging.getLogger(__name__)

# A text column with more distinct values than this (and mostly unique) looks like an identifier.
MAX_CATEGORIES = 200


@dataclass(frozen=True)
class Schema:
    """Column roles. Feature order is the order the model sees them in."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    id_columns: tuple[str, ...] = ()
    label_column: str | None = None

    @property
    def features(self) -> tuple[str, ...]:
        return self.numeric + self.categorical

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        return cls(
            numeric=tuple(d["numeric"]),
            categorical=tuple(d["categorical"]),
            id_columns=tuple(d.get("id_columns", ())),
            label_column=d.get("label_column"),
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
        required = [*self.features, *(self.id_columns if require_ids else ())]
        missing = [c for c in required if c not in df.columns]
        if missing:
            raise SchemaError(
                f"{source}: missing column(s) {missing}; the model expects {list(required)}"
            )
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


def to_numeric(col: pd.Series, name: str, source: str = "input") -> pd.Series:
    """``col`` as float64; a value that is not a number, or is infinite, raises SchemaError."""
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
        values = col.astype("float64")
    else:
        values = pd.to_numeric(col, errors="coerce").astype("float64")
        bad = values.isna().to_numpy() & col.notna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise SchemaError(
                f"{source}: column {name!r} must be numeric, but row {i} holds {col.iloc[i]!r}"
            )
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
        SchemaError: a named column does not exist, a column is all missing, or a text
            column looks like an identifier (too many distinct values to model).
    """
    named = [*id_columns, *categorical_columns, *([label_column] if label_column else [])]
    absent = [c for c in named if c not in df.columns]
    if absent:
        raise SchemaError(f"{source}: column(s) {absent} not found; columns are {[str(c) for c in df.columns]}")
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
