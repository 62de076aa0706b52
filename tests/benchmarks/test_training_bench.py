"""``python -m benchmarks.training`` on a few rows: warm-up, alternating timed fits, medians and the JSON keys issue 7
asks for (no speed is asserted: these are figures, not tests of speed)."""

import json

import pytest

from benchmarks.training import _median_run, main


def test_training_benchmark_writes_medians_of_alternating_runs(tmp_path, capsys):
    out = tmp_path / "training.json"
    assert main(["--rows", "1500", "--epochs", "1", "--repeats", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {
        "ours_samples_per_s",
        "pyod_samples_per_s",
        "ratio",
        "ours_runs_samples_per_s",
        "pyod_runs_samples_per_s",
        "repeats",
        "threads",
        "command",
        "date",
    }
    assert len(result["ours_runs_samples_per_s"]) == len(result["pyod_runs_samples_per_s"]) == 2
    assert result["ours_samples_per_s"] == min(result["ours_runs_samples_per_s"])  # lower middle of 2
    assert result["ratio"] == pytest.approx(result["ours_samples_per_s"] / result["pyod_samples_per_s"], abs=0.01)
    assert capsys.readouterr().out.count("run ") == 2


def test_median_run_and_repeats_check():
    runs = [{"samples_per_s": v} for v in (5.0, 1.0, 3.0)]
    assert _median_run(runs)["samples_per_s"] == 3.0
    with pytest.raises(SystemExit):
        main(["--repeats", "0"])
