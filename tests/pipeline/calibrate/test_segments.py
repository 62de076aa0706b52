"""Per-segment (Mondrian) thresholds: grouping, the report and summary, save/load, and the false-positive rate
within each segment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.calibrate.rules import FlagRule
from pipeline.calibrate.segments import POOLED, Segments, segment_values
from pipeline.detect.detector import VAEAnomalyDetector
from pipeline.errors import InputError
from pipeline.score.scoring import score_file
from vae.config import TrainConfig


def machines(n: int, seed: int, p: tuple[float, float, float] = (0.55, 0.43, 0.02)) -> pd.DataFrame:
    """A quiet machine, a noisy one (3x the spread) and a rare one; the noisy one's rows score higher."""
    r = np.random.default_rng(seed)
    seg = r.choice(["quiet", "noisy", "rare"], size=n, p=list(p))
    z = r.normal(size=(n, 2)) * np.where(seg == "noisy", 3.0, 1.0)[:, None]
    return pd.DataFrame(
        {"id": [f"r{i}" for i in range(n)], "a": z[:, 0], "b": z[:, 0] + 0.1 * r.normal(size=n), "c": z[:, 1]}
    ).assign(machine=seg)


def quick(seed: int = 0, **kw) -> VAEAnomalyDetector:
    return VAEAnomalyDetector(
        id_columns=["id"], segment_column="machine", n_models=1, train_config=TrainConfig(max_epochs=3), seed=seed, **kw
    )


def test_segments_group_calibration_scores_and_send_small_or_unseen_ones_to_the_pooled_threshold():
    labels = np.array(["a"] * 30 + ["b"] * 5 + ["c"] * 12)
    scores = np.arange(len(labels), dtype=float)
    seg = Segments.fit("m", labels, scores, alpha=0.1)  # alpha 0.1 needs 9 calibration rows
    assert seg.values == ["a", "c"] and seg.small == {"b": 5}
    assert np.array_equal(seg.calibration[1], np.arange(35, 47))
    assert seg.codes(np.array(["c", "b", "zz", "a"])).tolist() == [1, POOLED, POOLED, 0]
    assert seg.thresholds(0.1)[0] == 27.0 and seg.thresholds(0.05)[1] is None  # 12 rows cannot reach 0.05
    assert segment_values(pd.Series([3.0, None, "x"])).tolist() == ["3", "(missing)", "x"]


@pytest.fixture(scope="module")
def segmented():
    return quick(alpha=0.1).fit(machines(1200, 0))


def test_report_thresholds_and_summary_are_per_segment(segmented, tmp_path):
    assert segmented.calibration_rule_ == "split" and segmented.segments_.values == ["noisy", "quiet"]
    assert set(segmented.segments_.small) == {"rare"}
    new = machines(4000, 1)
    new.loc[:9, "machine"] = "brand-new"
    new.to_csv(tmp_path / "new.csv", index=False)
    s = score_file(segmented, tmp_path / "new.csv", tmp_path / "out")
    report = pd.read_csv(s.report)
    assert len(report) == 4000 and (report["is_anomaly"] == (report["score"] > report["threshold"])).all()
    assert (report["is_anomaly"] == (report["p_value"] <= 0.1)).all()
    thresholds = dict(zip(segmented.segments_.values, segmented.segments_.thresholds(0.1), strict=True))
    for machine, t in thresholds.items():
        assert np.allclose(report["threshold"][new["machine"] == machine], t, rtol=1e-8)
    pooled = new["machine"].isin(["rare", "brand-new"])
    assert np.allclose(report["threshold"][pooled], s.threshold, rtol=1e-8)
    by = {x["segment"]: x for x in s.segments}
    assert by["quiet"]["rows"] == int((new["machine"] == "quiet").sum())
    assert by["noisy"]["flagged"] == int(report["is_anomaly"][new["machine"] == "noisy"].sum())
    last = s.segments[-1]
    assert last["rows"] == int(pooled.sum()) and last["unseen_rows"] == 10
    assert any("10 rows have a 'machine' value never seen in training" in n for n in s.notes)
    assert any("'rare'" in n for n in s.notes)


def test_a_segmented_model_reloads_and_refuses_rules_without_a_per_segment_form(segmented, tmp_path):
    loaded = VAEAnomalyDetector.load(segmented.save(tmp_path / "m"))
    assert loaded.segments_.values == segmented.segments_.values and loaded.segment_column == "machine"
    for a, b in zip(loaded.segments_.calibration, segmented.segments_.calibration, strict=True):
        np.testing.assert_array_equal(a, b)
    machines(50, 2).to_csv(tmp_path / "new.csv", index=False)
    with pytest.raises(InputError, match=r"^this model has per-segment thresholds \(segment column 'machine'\)"):
        score_file(loaded, tmp_path / "new.csv", tmp_path / "out", rule=FlagRule("fdr", 0.1))


def test_bad_segment_columns_are_refused_in_one_line():
    df = machines(300, 3)
    with pytest.raises(InputError, match=r"^segment column 'shift' is not a column of the training data$"):
        VAEAnomalyDetector(segment_column="shift").fit(df)
    with pytest.raises(InputError, match=r"^segment column 'y' is the label column"):
        VAEAnomalyDetector(segment_column="y", label_column="y").fit(df.assign(y=0))
    with pytest.raises(InputError, match=r"are split-conformal: use calibration='split' or 'auto'"):
        VAEAnomalyDetector(id_columns=["id"], segment_column="machine", calibration="cross").fit(df)


def test_false_positive_rate_holds_within_each_segment():
    """Over 12 tables, the mean share of new normal rows flagged at alpha = 0.1 stays within alpha plus three
    standard errors in each segment; one threshold for the mix over-flags the noisy machine (measured too)."""
    alpha, rates, pooled = 0.1, {"quiet": [], "noisy": []}, {"quiet": [], "noisy": []}
    new = machines(6000, 99, p=(0.5, 0.5, 0.0))
    for seed in range(12):
        det = quick(seed, alpha=alpha).fit(machines(600, 100 + seed, p=(0.5, 0.5, 0.0)))
        codes = det.segment_codes(new)
        thresholds = np.asarray(det.segments_.thresholds(alpha))[codes]
        scores = det.score_samples(new)
        for m in rates:
            rates[m].append(float((scores > thresholds)[new["machine"] == m].mean()))
            pooled[m].append(float((scores > det.threshold_)[new["machine"] == m].mean()))
    for m, r in rates.items():
        mean, se = float(np.mean(r)), float(np.std(r, ddof=1) / np.sqrt(len(r)))
        assert mean <= alpha + 3 * se, (m, mean, se, r)
    assert np.mean(pooled["noisy"]) > 1.5 * alpha and np.mean(pooled["quiet"]) < alpha / 2, pooled


def test_predict_and_thresholds_use_each_rows_segment(segmented):
    new = machines(300, 4)
    t = segmented.thresholds(new)
    by = dict(zip(segmented.segments_.values, segmented.segments_.thresholds(segmented.alpha), strict=True))
    assert np.array_equal(t, new["machine"].map(by).fillna(segmented.threshold_).to_numpy())
    assert np.array_equal(segmented.predict(new), (segmented.score_samples(new) > t).astype(int))
    with pytest.raises(InputError, match=r"^missing segment column 'machine'"):
        segmented.thresholds(new.drop(columns="machine"))
