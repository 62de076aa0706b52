"""A progress bar for long scoring runs, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

SHOW_AFTER_S = 2.0  # runs shorter than this never show a bar


@contextmanager
def progress_bar(label: str, stream: TextIO | None = None) -> Iterator[Callable[[int, float], None] | None]:
    """A ``pipeline.score.scoring.Progress`` callback drawing a tqdm bar on ``stream`` (stderr); None off a terminal.

    The bar counts the share of the file read (in %) and shows the rows scored so far; it appears only
    once a run has lasted ``SHOW_AFTER_S`` seconds, and is cleared when the run ends.
    """
    stream = stream or sys.stderr
    if not stream.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(
        total=100,
        desc=label,
        unit="%",
        delay=SHOW_AFTER_S,
        file=stream,
        leave=False,
        bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
    ) as bar:

        def update(rows: int, share: float) -> None:
            bar.set_description_str(f"{label}: {rows:,} rows", refresh=False)
            bar.update(round(100 * share, 1) - bar.n)

        yield update
