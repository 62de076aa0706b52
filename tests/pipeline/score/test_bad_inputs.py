"""Every way a user can get input wrong, on pure pipeline code (no Prefect): one clear error or a documented
handling, never a traceback, a hang or a lost row. docs/bad-inputs.md lists them with these tests."""

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data.io import iter_table, read_table, sha256_file
from pipeline.detect.detector import VAEAnomalyDetector
from pipeline.errors import InputError, SchemaError
from pipeline.score.scoring import ensure_out_dir, score_file
from tests.conftest import make_table
from vae.config import TrainConfig

HEADER_ONLY_REPORT = "row,id,score,threshold,is_anomaly,p_value,top_features,top_observed,top_expected,missing\n"


def _table() -> pd.DataFrame:
    return make_table(20, seed=3)[0]


def _csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False)


def _with(column: str, row: int, value: object) -> pd.DataFrame:
    df = _table().astype({column: object})
    df.loc[row, column] = value
    return df


def _bad_file(case: str, tmp: Path) -> Path:
    """Write the bad input ``case`` into ``tmp``; returns its path."""
    df = _table()
    text = _csv(df)
    suffix = ".parquet" if case.endswith("parquet") else ".csv"
    p = tmp / f"{case}{suffix}"
    if case == "missing-column":
        p.write_text(_csv(df.drop(columns=["b"])))
    elif case == "renamed-column":
        p.write_text(_csv(df.rename(columns={"b": "B"})))
    elif case == "wrong-type":
        p.write_text(_csv(_with("b", 4, "abc")))
    elif case == "decimal-comma":
        p.write_text(_csv(_with("a", 3, "1,5")))
    elif case == "inf":
        p.write_text(_csv(_with("a", 2, np.inf)))
    elif case == "minus-inf":
        p.write_text(_csv(_with("c", 5, -np.inf)))
    elif case == "huge":
        p.write_text(_csv(_with("a", 2, 1e308)))
    elif case == "minus-huge":
        p.write_text(_csv(_with("d", 7, -1e308)))
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "blank-lines":
        p.write_text("\n\n")
    elif case == "no-header":
        p.write_text("\n".join(text.splitlines()[1:]) + "\n")
    elif case == "duplicate-columns":
        p.write_text(text.replace("id,a,b", "id,a,a", 1))
    elif case == "not-utf8":
        p.write_bytes(text.replace("circle", "cïrcle").encode("latin-1"))
    elif case == "too-many-fields":
        p.write_text(text + "x1,1,2,3,4,red,circle,9,9\n")
    elif case == "unclosed-quote":
        p.write_text(text + '"x1,1,2,3,4,red,circle\n')
    elif case == "truncated-parquet":
        full = tmp / "full.parquet"
        df.to_parquet(full)
        p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    elif case == "text-in-numeric-parquet":
        df.assign(a=["x"] * len(df)).to_parquet(p)
    elif case == "not-found":
        pass
    elif case == "directory":
        p.mkdir()
    else:
        raise AssertionError(case)
    return p


# case -> the one-line message (regex); each names the file and, where it applies, column and 0-based data row
BAD_SCORING_INPUTS = {
    "missing-column": r"missing-column.csv: missing column\(s\) \['b'\]; the model expects",
    "renamed-column": r"missing column\(s\) \['b'\].*found 'B' for 'b': column names are case- and space-sensitive",
    "wrong-type": r"wrong-type.csv: column 'b' must be numeric, but row 4 holds 'abc'",
    "decimal-comma": r"column 'a' must be numeric, but row 3 holds '1,5'",
    "inf": r"inf.csv: column 'a' must be finite, but row 2 holds inf",
    "minus-inf": r"column 'c' must be finite, but row 5 holds -inf",
    "huge": r"huge.csv: row 2 cannot be scored, its score overflows: column 'a' holds 1e\+308",
    "minus-huge": r"row 7 cannot be scored, its score overflows: column 'd' holds -1e\+308",
    "empty": r"input file is empty \(0 bytes\): .*empty.csv",
    "blank-lines": r"input file has no columns: .*blank-lines.csv",
    "no-header": r"no-header.csv: missing column\(s\).*does the file start with a header line\? Its first line reads",
    "duplicate-columns": r"duplicate column names in .*duplicate-columns.csv: \['a'\]",
    "not-utf8": r"cannot read .*not-utf8.csv: not UTF-8 text: byte 0xef at line 2 \(byte offset \d+\)",
    "too-many-fields": r"too-many-fields.csv: line 22 has 9 fields but the header has 7",
    "unclosed-quote": r"unclosed-quote.csv: a quoted value starting on line 22 is never closed",
    "truncated-parquet": r"cannot read .*truncated-parquet.parquet: not a readable Parquet file",
    "text-in-numeric-parquet": r"text-in-numeric-parquet.parquet: column 'a' must be numeric, but row 0 holds 'x'",
    "not-found": r"input file not found: .*not-found.csv",
    "directory": r"expected a file, got a directory: .*directory.csv",
}


@pytest.mark.parametrize("case", sorted(BAD_SCORING_INPUTS))
def test_bad_scoring_input_is_one_line_error_and_no_report(case, fitted_detector, tmp_path):
    src = _bad_file(case, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=BAD_SCORING_INPUTS[case]) as info:
        score_file(fitted_detector, src, out)
    assert "\n" not in str(info.value)
    assert not list(out.glob("*.anomalies.csv")) and not list(out.glob(".*.tmp"))


def _score(det, df: pd.DataFrame | str | bytes, tmp: Path, name: str = "batch.csv") -> pd.DataFrame:
    src = tmp / name
    if isinstance(df, pd.DataFrame):
        df.to_parquet(src) if name.endswith(".parquet") else df.to_csv(src, index=False)
    elif isinstance(df, bytes):
        src.write_bytes(df)
    else:
        src.write_text(df)
    s = score_file(det, src, tmp / "out")
    report = pd.read_csv(s.report, dtype={"id": str}, keep_default_na=False)
    assert s.rows == len(report) and s.flagged == int(report["is_anomaly"].sum())
    return report


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_a_csv_with_another_delimiter_is_read_with_the_delimiter_of_its_header(sep, fitted_detector, tmp_path):
    df = _table()
    plain = _score(fitted_detector, df, tmp_path, "plain.csv")
    other = _score(fitted_detector, df.to_csv(index=False, sep=sep), tmp_path, "other.csv")
    assert other["score"].tolist() == plain["score"].tolist() and other["id"].tolist() == plain["id"].tolist()


def test_extra_column_is_ignored_with_a_warning(fitted_detector, tmp_path, caplog):
    df = _table()
    with caplog.at_level(logging.WARNING):
        report = _score(fitted_detector, df.assign(note="x", z=1.0), tmp_path)
    assert "ignoring column(s) the model was not trained on: ['note', 'z']" in caplog.text
    plain = _score(fitted_detector, df, tmp_path, "plain.csv")
    assert report["score"].tolist() == plain["score"].tolist()


def test_nan_cells_and_an_all_nan_column_are_scored(fitted_detector, tmp_path):
    df = _table()
    df.loc[3, "a"] = np.nan
    df.loc[4, "color"] = np.nan
    df["c"] = np.nan  # the whole column missing in this batch: left out of every row's likelihood
    report = _score(fitted_detector, df, tmp_path)
    assert len(report) == len(df) and np.isfinite(report["score"]).all()
    expected = np.ones(len(df), dtype=int)  # every row lacks c; rows 3 and 4 lack one cell more
    expected[[3, 4]] = 2
    assert report["missing"].tolist() == expected.tolist()


def test_header_only_gives_an_empty_report(fitted_detector, tmp_path):
    src = tmp_path / "header.csv"
    src.write_text(",".join(_table().columns) + "\n")
    s = score_file(fitted_detector, src, tmp_path / "out")
    assert s.rows == 0 and s.flagged == 0
    assert Path(s.report).read_text() == HEADER_ONLY_REPORT


def test_single_row_unseen_category_and_constant_batch_are_scored(fitted_detector, tmp_path):
    df = _table()
    one = _score(fitted_detector, df.head(1), tmp_path, "one.csv")
    assert len(one) == 1 and one["id"].tolist() == ["r00000"]
    unseen = df.copy()
    unseen.loc[1, "shape"] = "hexagon"  # never seen in training: as surprising as the least likely category
    u = _score(fitted_detector, unseen, tmp_path, "unseen.csv")
    assert np.isfinite(u["score"]).all() and u["score"][1] >= _score(fitted_detector, df, tmp_path)["score"][1]
    constant = df.assign(a=10.0)  # a constant column in the batch is just data
    assert np.isfinite(_score(fitted_detector, constant, tmp_path, "constant.csv")["score"]).all()


def test_large_but_representable_values_get_a_finite_high_score(fitted_detector, tmp_path):
    df = _table()
    df.loc[2, "a"] = 1e12
    report = _score(fitted_detector, df, tmp_path)
    assert np.isfinite(report["score"]).all()
    assert report["is_anomaly"][2] == 1 and report["score"][2] == report["score"].max()


def test_bom_crlf_and_quoted_newlines_are_read(fitted_detector, tmp_path):
    df = _table()
    df.loc[1, "id"] = 'line one\nline two, "quoted"'
    text = _csv(df)
    plain = _score(fitted_detector, text, tmp_path, "plain.csv")
    bom = _score(fitted_detector, b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode(), tmp_path, "bom.csv")
    assert bom["id"][1] == 'line one\r\nline two, "quoted"'  # the quoted newline is kept as written
    assert bom["id"].drop(1).tolist() == plain["id"].drop(1).tolist()
    assert bom["score"].tolist() == plain["score"].tolist()
    assert plain["id"][1] == df["id"][1]
    assert read_table(tmp_path / "bom.csv").columns[0] == "id"


def test_parquet_with_numbers_stored_as_text_is_scored_like_numbers(fitted_detector, tmp_path):
    df = _table()
    as_text = _score(fitted_detector, df.astype({"a": str, "d": str}), tmp_path, "text.parquet")
    numeric = _score(fitted_detector, df, tmp_path, "numeric.parquet")
    assert np.allclose(as_text["score"], numeric["score"])


def test_ids_that_look_missing_are_kept_verbatim(fitted_detector, tmp_path):
    df = _table()
    df.loc[[0, 1, 2], "id"] = ["NA", "null", "007"]
    text = _csv(df).replace("\nr00003,", "\n,", 1)  # an empty id cell
    report = _score(fitted_detector, text, tmp_path)
    assert report["id"][:4].tolist() == ["NA", "null", "007", ""]


def test_short_rows_read_missing_trailing_cells_as_missing(fitted_detector, tmp_path):
    # documented: pandas pads a row with fewer fields than the header; the row is kept and scored
    report = _score(fitted_detector, _csv(_table()) + "x1,10,0.5\n", tmp_path)
    assert len(report) == 21 and report["id"].iloc[-1] == "x1" and np.isfinite(report["score"]).all()


def test_out_folder_that_cannot_be_written_is_an_input_error(fitted_detector, tmp_path):
    src = tmp_path / "ok.csv"
    _table().to_csv(src, index=False)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(InputError, match=r"output folder .*a-file exists and is not a folder"):
        score_file(fitted_detector, src, a_file)
    with pytest.raises(InputError, match=r"cannot create output folder .*a-file/sub: Not a directory"):
        ensure_out_dir(a_file / "sub")


# ------------------------------------------------------------------------------------------------ training
def _fit(df: pd.DataFrame, **kw) -> VAEAnomalyDetector:
    return VAEAnomalyDetector(alpha=0.1, id_columns=["id"], train_config=TrainConfig(max_epochs=2), **kw).fit(df)


def test_training_refuses_an_all_nan_column_and_a_header_only_table():
    df, _ = make_table(200, seed=4)
    with pytest.raises(SchemaError, match=r"column 'c' has no values \(all missing\)"):
        _fit(df.assign(c=np.nan))
    with pytest.raises(SchemaError, match=r"training data has no rows \(a header line only\?\): training needs"):
        _fit(df.head(0))


def test_training_on_too_few_rows_says_how_many_are_needed():
    df, _ = make_table(200, seed=4)
    with pytest.raises(InputError, match=r"^alpha=0.1 needs at least 30 normal training rows, got 1: give at least 30"):
        _fit(df.head(1))
    with pytest.raises(InputError, match=r"alpha=0.1 needs at least 30 normal training rows, got 29"):
        _fit(df.head(29))


def test_training_with_a_constant_column_scores_finite():
    df, _ = make_table(200, seed=4)
    det = _fit(df.assign(a=7.0, color="red"))
    assert np.isfinite(det.calibration_scores_).all() and np.isfinite(det.threshold_)
    assert np.isfinite(det.score_samples(df.head(5))).all()  # values off the constant stand out, finitely


def call_within(fn: Callable[[], object], fifos: Sequence[Path] = (), timeout_s: float = 10.0) -> BaseException | None:
    """Run ``fn`` in a thread and return its exception (None when it returned).

    Fails the test when ``fn`` is still running after ``timeout_s`` (a read blocked on a FIFO), after
    unblocking it: opening each of ``fifos`` for writing, then closing it, gives a blocked reader EOF.
    """
    result: list[BaseException | None] = []

    def target() -> None:
        try:
            fn()
            result.append(None)
        except BaseException as e:  # handed to the test
            result.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        for f in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"still running after {timeout_s} s: a FIFO was opened")
    return result[0]


@pytest.mark.parametrize("name", ["x.csv", "x.tsv", "x.parquet"])
def test_a_fifo_table_is_refused_before_it_is_opened(name, fitted_detector, tmp_path):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    out = tmp_path / "out"
    reads = {
        "score_file": lambda: score_file(fitted_detector, fifo, out),  # hashes the file beside the scoring
        "sha256_file": lambda: sha256_file(fifo),
        "read_table": lambda: read_table(fifo),
        "iter_table": lambda: next(iter_table(fifo)),
    }
    for what, read in reads.items():
        err = call_within(read, [fifo])
        assert isinstance(err, InputError), (what, err)
        assert str(err) == f"input file {fifo} is not a regular file: it is a FIFO (named pipe)", what
    assert list(out.glob("*")) == []
