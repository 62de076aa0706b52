"""Size arguments have upper bounds: a value out of range is one error line naming the flag (or field), the
value and the range, exit 2, before any model is loaded or any flow started (see docs/bad-inputs.md)."""

from __future__ import annotations

import importlib
import time
from typing import Any

import pytest

# Imported at collection, not inside a test: Prefect's log handler keeps the sys.stderr of its first import,
# and a test's capsys stream is closed after the test.
import flows.explore
import flows.inbox
import flows.score
import flows.score_flow
import flows.train
import flows.train_flow
from flows import tracking


def _never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("reached a model or a flow: the arguments should have been refused first")


EXPLORE_CASES = {
    "samples-n-huge": (["samples", "--n", "20000"], "--n must be in 1..1024 (images on one grid), got 20000"),
    "samples-n-zero": (["samples", "--n", "0"], "--n must be in 1..1024 (images on one grid), got 0"),
    "samples-seed": (["samples", "--seed", "-1"], "--seed must be in 0..4294967295 (a seed), got -1"),
    "steps-one": (
        ["interpolate", "a.png", "b.png", "--steps", "1"],
        "--steps must be in 2..100 (columns of one strip), got 1",
    ),
    "steps-huge": (
        ["interpolate", "a.png", "b.png", "--steps", "100000"],
        "--steps must be in 2..100 (columns of one strip), got 100000",
    ),
    "reconstruct-many": (
        ["reconstruct", *[f"{i}.png" for i in range(65)]],
        "reconstruct takes at most 64 images (columns of one figure), got 65",
    ),
}


@pytest.mark.parametrize("case", list(EXPLORE_CASES))
def test_explore_refuses_a_size_out_of_range_before_loading_the_model(case, monkeypatch, capsys):
    monkeypatch.setattr(tracking, "setup", _never)
    monkeypatch.setattr(tracking, "load_model", _never)
    argv, message = EXPLORE_CASES[case]
    t0 = time.perf_counter()
    assert flows.explore.main(argv) == 2  # before: --n 20000 drew its grid for minutes
    assert capsys.readouterr().err.splitlines() == [f"python -m flows.explore: error: {message}"]
    assert time.perf_counter() - t0 < 5


CLI_CASES = {
    "train-batch-size": (
        "flows.train",
        ["--data", "x.csv", "--batch-size", "1000000"],
        "batch_size: at most 65536 for tables, got 1000000",
    ),
    "train-seed": ("flows.train", ["--data", "x.csv", "--seed", "-1"], "seed: Input should be greater than or equal"),
    "train-images-batch-size": (
        "flows.train",
        ["--kind", "image", "imgs", "--batch-size", "100000"],
        "batch_size: at most 4096 for images, got 100000",
    ),
    "score-dask-workers": (
        "flows.score",
        ["x.csv", "--dask-workers", "1000"],
        "dask_workers: Input should be less than or equal to 64 (got 1000)",
    ),
    "inbox-dask-workers": (
        "flows.inbox",
        ["--inbox", "i", "--outbox", "o", "--once", "--dask-workers", "1000"],
        "dask_workers: Input should be less than or equal to 64 (got 1000)",
    ),
    "inbox-interval-huge": (
        "flows.inbox",
        ["--inbox", "i", "--outbox", "o", "--interval", "1e300"],
        "--interval must be > 0 and at most 2592000 seconds (30 days; use --cron for rarer runs), got 1e+300",
    ),
    "inbox-interval-nan": (
        "flows.inbox",
        ["--inbox", "i", "--outbox", "o", "--interval", "nan"],
        "--interval must be > 0 and at most 2592000 seconds (30 days; use --cron for rarer runs), got nan",
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_size_arguments_have_upper_bounds_checked_before_any_flow(case, monkeypatch, capsys, tmp_path):
    module, argv, message = CLI_CASES[case]
    monkeypatch.chdir(tmp_path)
    for name, attr in [
        ("flows.train_flow", "train"),
        ("flows.score_flow", "score"),
        ("flows.inbox", "score_inbox"),
        ("flows.inbox", "serve"),
    ]:
        monkeypatch.setattr(importlib.import_module(name), attr, _never)
    assert importlib.import_module(module).main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m {module}: error: ") and message in err[0], err
