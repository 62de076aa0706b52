"""Nothing lost: for any table that matches the schema, ingest and scoring keep every row, in order,
with its id intact (after formula neutralisation), and the counts reconcile. Pure pipeline code."""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.data.io import read_table
from pipeline.errors import InputError
from pipeline.score.report import neutralise_cell
from pipeline.score.scoring import score_file

FAST = settings(
    max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
TRICKY_IDS = [
    "=1+2",
    "+cmd|' /C calc'!A0",
    "-5",
    "-2e3",
    "@SUM(A1)",
    "\t=x",
    "\r=y",
    "NA",
    "null",
    "",
    " 7 ",
    "a,b",
    'say "hi"',
    "x\ny",
    "x\ry",
    "x\r\ny",
    "007",
    '=HYPERLINK("http://x","y")',
    "1,5",
    "é ü 中",
]
IDS = st.one_of(st.sampled_from(TRICKY_IDS), TEXT)
# the data's scale and far beyond it, and missing cells; any finite double is tried in its own test below
NUMBERS = st.one_of(st.floats(-100, 100), st.floats(-1e9, 1e9), st.just(float("nan")))
ANY_FINITE = st.floats(allow_nan=False, allow_infinity=False)
CATEGORIES = st.one_of(st.sampled_from(["red", "blue", "circle", "square", "star"]), st.none(), TEXT)


@st.composite
def tables(draw: st.DrawFn, extreme: bool = False) -> pd.DataFrame:
    n = draw(st.integers(1, 12))
    col = lambda s: draw(st.lists(s, min_size=n, max_size=n))  # noqa: E731
    df = pd.DataFrame(
        {
            "id": col(IDS),
            "a": col(NUMBERS),
            "b": col(NUMBERS),
            "c": col(NUMBERS),
            "d": col(NUMBERS),
            "color": col(CATEGORIES),
            "shape": col(CATEGORIES),
        }
    )
    if extreme:  # one cell anywhere in the range of doubles, 1e308 included
        df.loc[draw(st.integers(0, n - 1)), draw(st.sampled_from("abcd"))] = draw(ANY_FINITE)
    return df


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    # "\r\n" line ends: Python's csv module then quotes any cell holding "\r" or "\n", so the file is well formed
    df.to_csv(path, index=False, lineterminator="\r\n")


@FAST
@given(df=tables())
def test_ingest_keeps_every_row_id_and_number(df):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "t.csv"
        _write_csv(df, src)
        back = read_table(src, str_columns=["id"])
    assert len(back) == len(df)
    assert back["id"].tolist() == df["id"].tolist()
    for c in "abcd":
        np.testing.assert_array_equal(back[c].to_numpy(dtype=float), df[c].to_numpy(dtype=float))


def _score(det, df: pd.DataFrame, tmp: str):
    """(summary, report) of ``df`` written as CSV; (InputError, None) when it is refused."""
    src, out = Path(tmp) / "batch.csv", Path(tmp) / "out"
    _write_csv(df, src)
    try:
        s = score_file(det, src, out)
    except InputError as e:
        assert not list(out.glob("*.anomalies.csv"))  # refused: no report, not a partial one
        return e, None
    return s, pd.read_csv(s.report, dtype={"id": str}, keep_default_na=False)


def _check_nothing_lost(df: pd.DataFrame, s, report: pd.DataFrame) -> None:
    assert s.rows == len(df) == len(report)
    assert report["row"].tolist() == list(range(len(df)))
    assert report["id"].tolist() == [neutralise_cell(v) for v in df["id"]]
    assert set(report["is_anomaly"]) <= {0, 1}
    flagged = int(report["is_anomaly"].sum())
    assert s.flagged == flagged and flagged + int((report["is_anomaly"] == 0).sum()) == s.rows
    assert np.isfinite(report["score"]).all()
    assert (report["is_anomaly"] == (report["score"] > report["threshold"])).all()


@FAST
@given(df=tables())
def test_scoring_reports_every_row_in_order_with_ids_and_counts_that_reconcile(df, fitted_detector):
    with tempfile.TemporaryDirectory() as tmp:
        s, report = _score(fitted_detector, df, tmp)
    assert report is not None, f"refused a well-formed table: {s}"
    _check_nothing_lost(df, s, report)


@settings(FAST, max_examples=10)
@given(df=tables(extreme=True))
def test_any_finite_value_is_scored_or_refused_by_name_never_lost(df, fitted_detector):
    with tempfile.TemporaryDirectory() as tmp:
        s, report = _score(fitted_detector, df, tmp)
    if report is None:  # the only refusal: a value so far out that its score overflows, named by row
        assert "cannot be scored, its score overflows" in str(s) and "\n" not in str(s)
        row = int(str(s).split(": row ")[1].split()[0])
        assert np.nanmax(np.abs(df.loc[row, list("abcd")].to_numpy(dtype=float))) > 1e15
    else:
        _check_nothing_lost(df, s, report)


@pytest.mark.parametrize("cell", ["=1+2", "+cmd", "-x", "@SUM(A1)", "\t=x", "\r=y", "-", "+", "=", "-inf", "\t5"])
def test_formula_like_text_is_always_prefixed(cell):
    assert neutralise_cell(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["-12.5", "+3", "-2e3", "+.5", "-1E-7", "12", "plain", "a=b"])
def test_numbers_and_plain_text_are_left_alone(cell):
    assert neutralise_cell(cell) == cell
