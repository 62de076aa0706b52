"""Image batches through the scoring engine: read and scored in chunks, the report, flags, summary and contact
sheet are those of one chunk; an undecodable image keeps its row; nothing is written when none decodes."""

import numpy as np
import pandas as pd
import pytest

from pipeline.calibrate.rules import FlagRule, apply_rule
from pipeline.errors import InputError
from pipeline.score.image_scoring import score_images_batch
from pipeline.score.image_source import ImageSource
from pipeline.score.scoring import score_batch
from tests.conftest import write_png


@pytest.fixture(scope="module")
def batch(digit_files, tmp_path_factory):
    """The digits' new batch (130 images) with one file that is not an image."""
    import shutil

    folder = tmp_path_factory.mktemp("batch") / "new"
    shutil.copytree(digit_files.new_batch, folder)
    (folder / "3" / "0001_bad.png").write_bytes(b"not an image")
    return folder


def _score(det, folder, out, chunk_rows, rule=None, top_k=4):
    src = ImageSource(det, folder, top_k, out / "new.contact_sheet.png")
    return score_batch(det, src, out / "new.anomalies.csv", rule, chunk_rows=chunk_rows)


@pytest.mark.parametrize("rule", [None, FlagRule("fdr", 0.2)], ids=["alpha", "fdr"])
def test_chunks_of_seven_images_give_the_report_of_one_chunk(image_detector, batch, tmp_path, rule):
    one = _score(image_detector, batch, tmp_path / "one", 1024, rule)
    small = _score(image_detector, batch, tmp_path / "small", 7, rule)
    a, b = pd.read_csv(one.report, keep_default_na=False), pd.read_csv(small.report, keep_default_na=False)
    assert len(a) == one.rows == 131 and one.errors == 1 and one.scored == 130
    assert list(a.columns) == [
        "path",
        "score",
        "threshold",
        "is_anomaly",
        "p_value",
        *(["q_value"] if rule else []),
        "error",
    ]
    for c in a.columns:
        if c == "score":
            np.testing.assert_allclose(pd.to_numeric(a[c]), pd.to_numeric(b[c]), rtol=1e-6)
        else:
            assert a[c].tolist() == b[c].tolist(), c
    drop = {"seconds", "report", "report_html", "contact_sheet"}
    assert {k: v for k, v in one.to_dict().items() if k not in drop} == {
        k: v for k, v in small.to_dict().items() if k not in drop
    }
    bad = a[a["error"] != ""]
    assert bad["path"].tolist() == ["3/0001_bad.png"] and (bad[["score", "is_anomaly", "p_value"]] == "").all(axis=None)
    good = a[a["error"] == ""]
    flags = apply_rule(
        rule or FlagRule("alpha", image_detector.alpha),
        good["score"].astype(float).to_numpy(),
        image_detector.calibration_scores_,
    )
    assert good["is_anomaly"].astype(int).tolist() == flags.is_anomaly.astype(int).tolist()
    np.testing.assert_allclose(good["p_value"].astype(float), flags.p_value, rtol=1e-8)


def test_the_contact_sheet_shows_the_highest_scores_of_every_chunk(image_detector, batch, tmp_path, monkeypatch):
    shown = {}

    def fake_sheet(pixels, recon, err, scores, paths, threshold, path):
        shown.update(scores=list(scores), paths=list(paths), threshold=threshold)
        return path

    monkeypatch.setattr("pipeline.score.image_source.contact_sheet", fake_sheet)
    s = _score(image_detector, batch, tmp_path, 7, top_k=5)
    report = pd.read_csv(s.report).dropna(subset=["score"])
    best = report.sort_values("score", ascending=False, kind="stable").head(5)
    assert shown["paths"] == best["path"].tolist() and shown["threshold"] == s.threshold
    np.testing.assert_allclose(shown["scores"], best["score"], rtol=1e-7)


def test_no_decodable_image_writes_nothing(image_detector, tmp_path):
    for i in range(3):
        (tmp_path / "in" / f"{i}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "in" / f"{i}.png").write_bytes(b"nope")
    with pytest.raises(InputError, match=r"none of the 3 images could be decoded \(first: 0.png: "):
        _score(image_detector, tmp_path / "in", tmp_path / "out", 2)
    assert not list((tmp_path / "out").glob("*"))


def test_an_array_file_is_cut_into_chunks_and_its_notes_kept(image_detector, tmp_path):
    x = (np.random.default_rng(0).random((30, 10, 10)) * 255).astype(np.uint8)  # resized to the model's 8x8
    np.savez(tmp_path / "arr.npz", x=x, y=np.arange(30) % 2)
    whole = score_images_batch(image_detector, tmp_path / "arr.npz", tmp_path / "a", top_k=0)
    src = ImageSource(image_detector, tmp_path / "arr.npz", 0, tmp_path / "b" / "sheet.png")
    cut = score_batch(image_detector, src, tmp_path / "b" / "arr.anomalies.csv", chunk_rows=4)
    assert pd.read_csv(whole.report)["path"].tolist() == pd.read_csv(cut.report)["path"].tolist()
    assert (
        whole.notes[:2]
        == cut.notes[:2]
        == ["resized 10x10->8x8 (30 images)", "labels found beside the images: not used for scoring"]
    )
    assert whole.input_sha256 == cut.input_sha256 and whole.rows == cut.rows == 30


def test_a_resized_image_is_counted_in_the_notes(image_detector, tmp_path):
    write_png(tmp_path / "in" / "big.png", np.full((16, 16), 200))
    s = score_images_batch(image_detector, tmp_path / "in", tmp_path / "out", top_k=1)
    assert s.notes[0] == "resized 16x16->8x8 (1 images)" and s.rows == s.scored == 1
