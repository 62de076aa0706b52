"""Streaming scoring: the report of a file read and scored in chunks is byte-identical to scoring it whole,
row numbers in errors count over the whole file, and no chunk holds more rows than asked. Pure pipeline code."""

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline.detect.detector_scoring
import pipeline.score.scoring
from pipeline.calibrate.rules import FlagRule, apply_rule
from pipeline.data.io import iter_table, read_table
from pipeline.detect.attribution import attribution_columns
from pipeline.errors import InputError
from pipeline.score.report import build_report, neutralise_cell
from pipeline.score.scoring import score_file
from tests.conftest import make_table

SMALL = 64  # SCORE_CHUNK in these tests: a 300-row file spans 5 model batches


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(pipeline.detect.detector_scoring, "SCORE_CHUNK", SMALL)
    monkeypatch.setattr(pipeline.score.scoring, "SCORE_CHUNK", SMALL)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as score_file runs the model on a 2-core machine (and fast when it is shared)
    yield
    torch.set_num_threads(threads)


def _old_csv(frame: pd.DataFrame) -> str:
    """The report writer before streaming (pipeline/score/report.py at 9b96bec), as the reference bytes."""

    def cells(col: pd.Series) -> list[str]:
        if pd.api.types.is_float_dtype(col):
            x = col.to_numpy(dtype=np.float64)
            out = np.char.mod("%.9g", x).astype(object)
            out[np.isnan(x)] = ""
            return out.tolist()
        if pd.api.types.is_integer_dtype(col):
            return [str(int(v)) for v in col.to_numpy()]
        return [
            "" if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else _quote(str(v))
            for v in col.to_numpy(dtype=object)
        ]

    columns = [cells(frame[c]) for c in frame.columns]
    header = ",".join(str(c) for c in frame.columns) + "\n"
    return header + "".join(",".join(row) + "\n" for row in zip(*columns, strict=True))


def _quote(t: str) -> str:
    return '"' + t.replace('"', '""') + '"' if any(ch in t for ch in ',"\n\r') else t


def _reference(det, src: Path, rule: FlagRule) -> str:
    """The non-streaming scoring path before streaming: whole file in memory, then the report (with the
    ``missing`` count each row's cells give, added since)."""
    df = read_table(src, str_columns=det.schema_.id_columns)
    features = det.schema_.validate(df, source=str(src))
    scores, explanation = det.score_and_explain(features)
    flags = apply_rule(rule, scores, det.calibration_scores_)
    report = build_report(
        df, scores, flags.threshold, det.schema_.id_columns, flags.is_anomaly, flags.p_value, flags.q_value
    )
    attribution = attribution_columns(det, df, explanation)
    for c in attribution.columns:
        report[c] = attribution[c].map(neutralise_cell).to_numpy()
    for c in det.schema_.id_columns:  # the report writer neutralises every text cell
        report[c] = report[c].map(neutralise_cell)
    report["missing"] = df[list(det.schema_.features)].isna().sum(axis=1).to_numpy(dtype=np.int64)
    return _old_csv(report)


def _batch(tmp_path: Path, n: int = 300, name: str = "batch.csv") -> tuple[Path, np.ndarray]:
    df, y = make_table(n, seed=11, anomalies=n // 10)
    df.loc[[3, 70, 200], "id"] = ["=1+2", 'a,"b"\nc', "-5"]  # neutralised, quoted, a number
    df.loc[5, "a"] = np.nan
    df.loc[130, "shape"] = "hexagon"
    src = tmp_path / name
    df.assign(truth=y).to_parquet(src) if name.endswith(".parquet") else df.assign(truth=y).to_csv(src, index=False)
    return src, y


@pytest.mark.parametrize("rule", [FlagRule("alpha", 0.05), FlagRule("fdr", 0.1), FlagRule("conditional", 0.1, 0.2)])
def test_streamed_report_is_byte_identical_to_the_whole_file_report(rule, fitted_detector, tmp_path, small_batches):
    src, _ = _batch(tmp_path)
    expected = _reference(fitted_detector, src, rule)
    for chunk_rows, read_rows in [(SMALL, 1), (SMALL, 7), (2 * SMALL, 100), (10_000, None)]:
        out = tmp_path / f"out-{chunk_rows}-{read_rows}"
        s = score_file(fitted_detector, src, out, rule=rule, chunk_rows=chunk_rows, read_rows=read_rows)
        assert Path(s.report).read_text() == expected, (chunk_rows, read_rows)
        assert not list(out.glob(".*"))  # no temporary report, no spill left behind


def test_whole_batch_columns_and_summary_do_not_depend_on_chunking(fitted_detector, tmp_path, small_batches):
    src, y = _batch(tmp_path, name="labelled.parquet")
    runs = {}
    for rows in (SMALL, 100_000):
        for f1 in (False, True):
            s = score_file(
                fitted_detector,
                src,
                tmp_path / f"o{rows}{f1}",
                rule=FlagRule("fdr", 0.2),
                label_column="truth",
                f1_optimal=f1,
                chunk_rows=rows,
                read_rows=5,
            )
            runs[rows, f1] = (
                Path(s.report).read_bytes(),
                {k: v for k, v in s.to_dict().items() if k not in ("seconds", "report", "report_html")},
                Path(s.report_html).read_text().replace(str(tmp_path / f"o{rows}{f1}"), "OUT"),
            )
    for f1 in (False, True):
        assert runs[SMALL, f1] == runs[100_000, f1]
    report = pd.read_csv(tmp_path / f"o{SMALL}True" / "labelled.anomalies.csv")
    summary = runs[SMALL, True][1]
    assert any("F1-optimal threshold" in n for n in summary["notes"])
    assert (report["is_anomaly"] == (report["score"] > summary["threshold"])).all()
    assert summary["metrics"]["n_labelled_anomalies"] == int(y.sum()) and summary["rows"] == len(y)
    fdr = pd.read_csv(tmp_path / f"o{SMALL}False" / "labelled.anomalies.csv")
    assert (fdr["is_anomaly"] == (fdr["q_value"] <= 0.2)).all()


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("b", "abc", "column 'b' must be numeric, but row 150 holds 'abc'"),
        ("a", np.inf, "column 'a' must be finite, but row 150 holds inf"),
        ("a", 1e308, "row 150 cannot be scored, its score overflows: column 'a' holds 1e+308"),
        ("truth", 7, "label column 'truth' must hold 0 or 1 (1 = anomaly), row 150 holds"),
    ],
)
def test_errors_name_the_row_counted_over_the_whole_file(
    column, value, message, fitted_detector, tmp_path, small_batches
):
    df, _ = make_table(200, seed=3)
    df = df.assign(truth=0).astype({column: object})
    df.loc[150, column] = value
    src = tmp_path / "bad.csv"
    df.to_csv(src, index=False)
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        score_file(fitted_detector, src, out, label_column="truth", chunk_rows=SMALL, read_rows=7)
    assert message in str(info.value) and str(info.value).count("row ") == 1
    assert not out.exists() or not list(out.iterdir())  # chunks before row 150 were written: nothing remains


def test_chunks_stay_bounded_and_progress_reaches_the_end(fitted_detector, tmp_path, small_batches, monkeypatch):
    src, _ = _batch(tmp_path, n=700, name="big.parquet")
    seen: list[int] = []
    real = type(fitted_detector).score_and_explain
    monkeypatch.setattr(
        type(fitted_detector),
        "score_and_explain",
        lambda self, features: (seen.append(len(features)), real(self, features))[1],
    )
    calls: list[tuple[int, float]] = []
    s = score_file(
        fitted_detector,
        src,
        tmp_path / "out",
        chunk_rows=100,
        read_rows=30,
        progress=lambda rows, share: calls.append((rows, share)),
    )
    assert seen == [128] * 5 + [60]  # chunk_rows is rounded up to a multiple of SCORE_CHUNK
    assert [r for r, _ in calls] == [128, 256, 384, 512, 640, 700] and s.rows == 700
    assert calls[-1][1] == 1.0 and all(a[1] <= b[1] for a, b in itertools.pairwise(calls))


def test_iter_table_chunks_count_rows_over_the_file(tmp_path):
    df, _ = make_table(50, seed=1)
    src = tmp_path / "t.csv"
    df.to_csv(src, index=False)
    chunks = list(iter_table(src, ["id"], chunk_rows=16))
    assert [len(c) for c in chunks] == [16, 16, 16, 2]
    assert [c.index[0] for c in chunks] == [0, 16, 32, 48]
    assert pd.concat(chunks).equals(read_table(src, ["id"]))
    (tmp_path / "h.csv").write_text("id,a\n")
    [empty] = list(iter_table(tmp_path / "h.csv", ["id"], chunk_rows=16))
    assert list(empty.columns) == ["id", "a"] and len(empty) == 0
