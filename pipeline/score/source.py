"""What a kind of input gives the scoring engine (:mod:`pipeline.score.scoring`): chunks, scores, report columns."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Layout:
    """The report's own columns of a kind, around the engine's (``score``, ``threshold``, ``is_anomaly``,
    ``p_value`` and, under ``fdr``, ``q_value``); fixed by the first chunk."""

    before: list[str]
    after: list[str]
    page: list[str]  # the columns of the flagged rows listed on the report page
    label: str | None = None  # a 0/1 label column (1 = anomaly) whose labels :meth:`Source.score` returns


@dataclass
class Scored:
    """One chunk's scores: NaN for a row that could not be read (its report row says why; no flag, no p-value)."""

    scores: np.ndarray
    labels: np.ndarray | None = None  # (n,) int8, with a label column
    segments: pd.Series | None = None  # each row's segment value, for a model with per-segment thresholds
    detail: Any = None  # what the source needs to build the chunk's report columns
    read: np.ndarray = field(init=False)  # (n,) bool: the rows with a score

    def __post_init__(self) -> None:
        self.read = np.isfinite(self.scores)


class Source(Protocol):
    """One input of one kind, read chunk by chunk.

    Attributes:
        name: the input as messages and the summary name it.
        missing_rows: rows with an empty feature cell among those :meth:`columns` has seen, for the report
            page; None for a kind without cells (images).
    """

    name: str
    missing_rows: int | None

    def chunks(self, rows: int, on_read: Callable[[float], None]) -> Iterator[Any]:
        """The input in chunks of ``rows`` (at least one chunk); ``on_read`` gets the share read so far."""
        ...

    def sha256(self) -> str: ...

    def start(self, chunk: Any) -> Layout:
        """Checks of the first chunk; the report's columns."""
        ...

    def score(self, chunk: Any, offset: int) -> Scored:
        """The chunk's scores; ``offset`` is the chunk's first row in the input (for messages)."""
        ...

    def columns(self, chunk: Any, scored: Scored, offset: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The chunk's typed report columns before and after the engine's (run beside the next chunk's scoring)."""
        ...

    def finish(self, threshold: float) -> dict[str, Any]:
        """After the report: notes for the summary (``notes``) and the kind's own summary fields."""
        ...
