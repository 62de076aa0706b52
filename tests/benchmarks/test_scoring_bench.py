"""``python -m benchmarks.scoring`` end to end on a small file: it trains, scores through the CLI, and writes the
JSON keys issue 7 asks for (no timing is asserted: these are figures, not tests of speed)."""

import json

import pytest

from benchmarks.scoring import main

KEYS = {
    "rows",
    "score_s",
    "score_file_s",
    "io_floor_s",
    "ratio_to_io_floor",
    "peak_rss_mb",
    "pyod_score_s",
    "startup_s",
    "machine",
    "command",
    "date",
}


def test_scoring_benchmark_writes_its_figures_and_cleans_up(prefect_harness, tmp_path, monkeypatch):
    from prefect.settings import get_current_settings

    # the CLI runs reuse the session's Prefect server instead of starting their own
    monkeypatch.setenv("PREFECT_API_URL", str(get_current_settings().api.url))
    out = tmp_path / "scoring.json"
    work = tmp_path / "work"
    work.mkdir()
    assert (
        main(
            [
                "--rows",
                "2000",
                "--train-rows",
                "600",
                "--max-epochs",
                "1",
                "--pyod-fit-rows",
                "300",
                "--pyod-epochs",
                "1",
                "--workdir",
                str(work),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result) >= KEYS
    assert result["rows"] == 2000 and result["cols"] == 21 and result["prefect_api"] == "PREFECT_API_URL"
    assert result["ratio_to_io_floor"] == pytest.approx(result["score_s"] / result["io_floor_s"], rel=0.2)
    assert result["peak_rss_mb"] > 0 and result["startup_s"] > 0 and result["pyod_score_s"] > 0
    assert result["report_bytes"] > 2000 * 20  # one report line per row
    assert list(work.iterdir()) == []  # generated files deleted
