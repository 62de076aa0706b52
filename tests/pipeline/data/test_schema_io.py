"""Schema inference and enforcement; reading files."""

import logging

import numpy as np
import pandas as pd
import pytest

from pipeline.data.io import read_table
from pipeline.data.schema import Schema, infer_schema
from pipeline.errors import InputError, SchemaError
from tests.conftest import make_table


def test_infer_schema_roles():
    df, _ = make_table(50)
    df["label"] = 0
    s = infer_schema(df, id_columns=["id"], label_column="label")
    assert s.numeric == ("a", "b", "c", "d")
    assert s.categorical == ("color", "shape")
    assert s.id_columns == ("id",) and s.label_column == "label"


def test_forced_categorical_and_numeric_text():
    df = pd.DataFrame({"port": [22, 80, 443, 80], "x": ["1.5", "2", None, "3"]})
    s = infer_schema(df, categorical_columns=["port"])
    assert s.categorical == ("port",) and s.numeric == ("x",)


def test_missing_column_is_named():
    df, _ = make_table(20)
    s = infer_schema(df, id_columns=["id"])
    with pytest.raises(SchemaError, match=r"batch\.csv: missing column\(s\) \['c'\]"):
        s.validate(df.drop(columns=["c"]), source="batch.csv")


def test_extra_column_is_ignored_with_a_warning(caplog):
    df, _ = make_table(20)
    s = infer_schema(df, id_columns=["id"])
    with caplog.at_level(logging.WARNING):
        out = s.validate(df.assign(extra=1.0))
    assert "extra" not in out.columns
    assert "ignoring column(s) the model was not trained on: ['extra']" in caplog.text


def test_non_numeric_value_names_column_and_first_bad_row():
    df, _ = make_table(20)
    s = infer_schema(df, id_columns=["id"])
    bad = df.astype({"b": object})
    bad.loc[7, "b"] = "oops"
    bad.loc[9, "b"] = "worse"
    with pytest.raises(SchemaError, match=r"column 'b' must be numeric, but row 7 holds 'oops'"):
        s.validate(bad)


def test_infinite_value_is_an_error():
    df, _ = make_table(20)
    s = infer_schema(df, id_columns=["id"])
    df.loc[3, "a"] = np.inf
    with pytest.raises(SchemaError, match=r"column 'a' must be finite, but row 3 holds inf"):
        s.validate(df)


def test_identifier_like_text_column_is_refused():
    df = pd.DataFrame({"x": np.arange(500.0), "uuid": [f"u{i}" for i in range(500)]})
    with pytest.raises(SchemaError, match=r"column 'uuid' looks like an identifier.*--id-columns"):
        infer_schema(df)


def test_all_missing_column_is_refused():
    df = pd.DataFrame({"x": [1.0, 2.0], "empty": [np.nan, np.nan]})
    with pytest.raises(SchemaError, match=r"column 'empty' has no values"):
        infer_schema(df)


def test_read_table_errors(tmp_path):
    with pytest.raises(InputError, match="input file not found"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(InputError, match=r"input file is empty \(0 bytes\)"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "x.xlsx").write_bytes(b"PK")
    with pytest.raises(InputError, match=r"unsupported file type '.xlsx'"):
        read_table(tmp_path / "x.xlsx")
    (tmp_path / "dup.csv").write_text("a,a\n1,2\n")
    with pytest.raises(InputError, match=r"duplicate column names in .*dup.csv: \['a'\]"):
        read_table(tmp_path / "dup.csv")  # pandas would rename them (a, a.1) and hide the mistake


def test_read_csv_keeps_id_text_and_parquet_and_npz(tmp_path):
    (tmp_path / "t.csv").write_text("id,x\n007,1.5\n010,2\n")
    df = read_table(tmp_path / "t.csv", str_columns=["id"])
    assert df["id"].tolist() == ["007", "010"]
    pq = tmp_path / "t.parquet"
    pd.DataFrame({"id": [1, 2], "x": [1.0, 2.0]}).to_parquet(pq)
    assert read_table(pq, str_columns=["id"])["id"].tolist() == ["1", "2"]
    np.savez(tmp_path / "d.npz", X=np.ones((3, 2), np.float32), y=np.array([0, 1, 0], np.int8))
    d = read_table(tmp_path / "d.npz")
    assert list(d.columns) == ["x0", "x1", "label"] and d["label"].tolist() == [0, 1, 0]


def test_a_nul_byte_is_text_so_a_numeric_cell_holding_one_is_named(tmp_path):
    df, _ = make_table(5)
    s = infer_schema(df, id_columns=["id"])
    p = tmp_path / "nul.csv"
    text = df.to_csv(index=False).splitlines()
    cells = text[3].split(",")
    cells[1] = "1\x002"  # column 'a' of data row 2
    p.write_text("\n".join([*text[:3], ",".join(cells), *text[4:]]) + "\n")
    with pytest.raises(SchemaError, match=r"column 'a' must be numeric, but row 2 holds '1\\x002'"):
        s.validate(read_table(p, str_columns=["id"]), source=str(p))


def test_a_bare_carriage_return_in_an_unquoted_cell_is_a_line_break(tmp_path):
    p = tmp_path / "cr.csv"
    p.write_bytes(b"id,a\nr1\rx,1\nr2,3\n")  # RFC 4180: quote a cell that holds a line break
    df = read_table(p, str_columns=["id"])
    assert df["id"].tolist() == ["r1", "x", "r2"]
    assert df["a"].isna().tolist() == [True, False, False]


def test_a_misspelt_column_is_named_with_the_column_it_should_be():
    schema = Schema(numeric=(*(f"f{i}" for i in range(20)), "mean_texture"), categorical=())
    header = [*(f"f{i}" for i in range(20)), "mean_textrue"]
    with pytest.raises(SchemaError) as e:
        schema.check_columns(header, "b.csv")
    assert str(e.value).startswith("b.csv: missing column(s) ['mean_texture']; the model expects ['f0', ")
    assert "'... 21 in all']" in str(e.value)  # a long schema is cut, the line stays readable
    assert str(e.value).endswith("did you mean 'mean_textrue' -> 'mean_texture'? (rename the column in the file)")
