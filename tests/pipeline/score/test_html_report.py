"""pipeline.score.html_report: each scored batch's self-contained page, read as text and rendered by Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.score.html_report import ScoreHistogram
from pipeline.score.image_scoring import score_images_batch
from pipeline.score.scoring import score_file
from tests.conftest import make_table

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture
def table_page(fitted_detector, tmp_path) -> tuple[Path, dict]:
    df, _ = make_table(400, seed=21, anomalies=30)
    df.loc[[5, 9], "a"] = np.nan
    src = tmp_path / "batch.csv"
    df.to_csv(src, index=False)
    s = score_file(fitted_detector, src, tmp_path / "out")
    return Path(s.report_html), s.to_dict()


def test_a_table_page_states_the_rule_counts_health_and_lists_the_top_flagged_rows(table_page):
    page, s = table_page
    assert page == page.parent / "batch.report.html" and s["report_html"] == str(page)
    text = page.read_text()
    assert f"<strong>Rule:</strong> {s['rule']}" in text.replace("&lt;", "<")
    assert f"<dd>{s['flagged']:,} ({s['flagged_fraction']:.2%})</dd>" in text
    assert "<dt>with missing cells</dt><dd>2</dd>" in text
    assert ("verdict warn" in text) == bool(s["health"]["warning"])
    rows = re.findall(r"<tr><td>(\d+)</td>", text)
    assert 0 < len(rows) == min(s["flagged"], 50)
    assert text.count('src="data:image/png;base64,') == 1  # the histogram, inline


def test_the_page_is_self_contained_and_small(table_page):
    text = table_page[0].read_text()
    assert "<script" not in text and not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert len(text) < 300_000


def test_an_image_batch_page_shows_its_contact_sheet(image_detector, digit_files, tmp_path):
    s = score_images_batch(image_detector, digit_files.new_batch, tmp_path, top_k=4)
    text = Path(s.report_html).read_text()
    assert "Most anomalous images" in text and text.count("data:image/png;base64,") == 2
    assert "<th>path</th><th>score</th><th>p_value</th>" in text and "images" in text


def test_scores_outside_the_plotted_range_are_counted_not_drawn():
    hist = ScoreHistogram(np.linspace(0, 10, 101), threshold=8.0)
    hist.add(np.array([-5.0, 1.0, 2.0, 1e9, np.nan]))
    assert (hist.below, hist.above, int(hist.counts.sum())) == (1, 1, 2)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_the_page_renders_in_a_real_browser(table_page, tmp_path):
    from PIL import Image

    page, _ = table_page
    shot = tmp_path / "page.png"
    r = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), r.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    dark = (pixels < 128).mean()  # text, table lines and the histogram's bars
    assert 0.005 < dark < 0.5 and pixels.std() > 20, (dark, pixels.std())
