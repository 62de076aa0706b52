"""``python -m benchmarks.rest`` without a server: arguments, medians per size, the largest request within
MLflow's timeout, the JSON keys and the summary (the measuring part is replaced by canned runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import benchmarks.rest as rest


def _run(rows: int, seconds: float, status: int = 200, repeat: int = 1) -> dict[str, Any]:
    return {
        "repeat": repeat,
        "rows": rows,
        "csv_bytes": rows * 80,
        "seconds": seconds,
        "rows_per_s": round(rows / seconds),
        "status": status,
    }


def test_arguments_defaults_and_checks():
    args = rest.parse_args([])
    assert args.rows == [10_000, 100_000, 250_000] and args.repeats == 3 and not args.busy
    assert args.out == Path("benchmarks/results/rest.json") and args.margin == 3.0
    args = rest.parse_args(["--rows", "10", "20", "--repeats", "1", "--busy", "--out", "x.json"])
    assert args.rows == [10, 20] and args.repeats == 1 and args.busy and args.out == Path("x.json")
    for bad in (["--repeats", "0"], ["--rows", "0"], ["--margin", "0.5"]):
        with pytest.raises(SystemExit):
            rest.parse_args(bad)


def test_medians_per_size_and_largest_request():
    runs = [_run(1000, s, repeat=i) for i, s in enumerate((0.5, 0.1, 0.2))]
    runs += [_run(10_000, s, repeat=i) for i, s in enumerate((2.0, 4.0, 1.0))]
    sizes = rest.per_size(runs)
    assert [s["rows"] for s in sizes] == [1000, 10_000]
    assert sizes[0]["median_s"] == 0.2 and sizes[0]["median_rows_per_s"] == 5000
    assert sizes[1]["median_s"] == 2.0 and sizes[1]["median_rows_per_s"] == 5000
    assert all(s["all_ok"] for s in sizes)
    big = rest.largest_request(sizes, 60, 3.0)
    assert big == {"rows_per_s": 5000, "max_rows": 100_000, "timeout_s": 60, "margin": 3.0}


def test_a_size_that_failed_does_not_set_the_rate():
    sizes = rest.per_size([_run(1000, 0.1), _run(100_000, 70.0, status=504)])
    assert [s["all_ok"] for s in sizes] == [True, False] and sizes[1]["statuses"] == [504]
    assert rest.largest_request(sizes, 60, 3.0)["max_rows"] == 10_000 * 60 // 3
    nothing = rest.largest_request(sizes[1:], 60, 3.0)
    assert nothing["max_rows"] is None and nothing["rows_per_s"] is None


def test_main_writes_the_result_and_prints_the_summary(tmp_path, monkeypatch, capsys):
    meta = {"request_timeout_s": 60, "model_uri": "models:/bench-rest@champion", "server_start_s": 5.0}

    def fake_measure(args, work):
        assert work.is_dir()
        return [_run(n, n / 4000, repeat=r) for r in (1, 2) for n in args.rows], meta

    monkeypatch.setattr(rest, "measure", fake_measure)
    out = tmp_path / "rest.json"
    argv = ["--rows", "1000", "8000", "--repeats", "2", "--busy", "--out", str(out), "--workdir", str(tmp_path / "w")]
    assert rest.main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {
        "command",
        "date",
        "machine",
        "rows",
        "repeats",
        "busy",
        "sizes",
        "largest_request",
        "runs",
        "request_timeout_s",
        "model_uri",
    }
    assert result["command"] == "python -m benchmarks.rest " + " ".join(argv)
    assert len(result["runs"]) == 4 and result["busy"] is True
    assert result["largest_request"]["max_rows"] == 80_000
    assert not list((tmp_path / "w").iterdir())  # the work folder is removed
    printed = capsys.readouterr().out
    assert "8,000" in printed and "up to 80,000 rows" in printed
