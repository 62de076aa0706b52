"""The scoring engine: one input, a table file or an image batch, into a report and its summary, streaming.

Design (bounded memory whatever the file size):

- The input is read in chunks by its :class:`~pipeline.score.source.Source`: a table file
  (:class:`~pipeline.score.table_source.TableSource`) re-cut to exactly ``chunk_rows`` rows, a multiple of the
  detector's ``SCORE_CHUNK``, so the model sees the same torch batches as when the whole file is scored at once
  and scores are bit-identical whatever the read chunking; an image batch
  (:class:`~pipeline.score.image_source.ImageSource`) decoded a bounded number of images at a time.
- The source scores each chunk (a table's rows are validated, and schema errors name the file, the column and
  the row counted over the whole file; an image that cannot be decoded keeps its row, with no score), and its
  report lines are written to the temporary file of :func:`pipeline.score.report.atomic_writer`, renamed into
  place only once every row is written.
- Nothing per row is kept for the whole file with the default rules: the health check's KS counts
  (:class:`pipeline.calibrate.health.KSCounter`) and the flag count are updated chunk by chunk. Labels, ``fdr``
  and ``f1_optimal`` need every score at the end: then the scores (float64, 8 bytes/row), flags and
  labels (1 byte/row each) are kept, and the whole-file steps run after the memory the chunks freed is
  handed back to the OS (``malloc_trim``).
- Columns that depend on the whole batch (``threshold``, ``is_anomaly``, ``q_value`` under
  ``fdr``; ``threshold`` and ``is_anomaly`` under ``f1_optimal`` with labels) cannot be written in
  the first pass. The other columns of each chunk are then spilled, typed, to an Arrow IPC stream
  in a temporary file; a second pass reads the spill back chunk by chunk, adds those columns
  from the in-memory scores and writes the report. With the default rules (``alpha``,
  ``conditional``) every column is known per row and the report is written in one pass.
- Reading, scoring and writing overlap: the next chunk is read in a background thread and the
  previous chunk is formatted and written in another while the model scores the current one.

A table report's bytes depend only on the model and the input: the same as scoring the file whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from pipeline.calibrate.rules import FlagRule
from pipeline.detect.detector import VAEAnomalyDetector
from pipeline.detect.detector_scoring import SCORE_CHUNK
from pipeline.detect.ensemble import EnsembleDetector
from pipeline.errors import InputError
from pipeline.score.html_report import write_html_report
from pipeline.score.report import atomic_writer, report_path
from pipeline.score.score_run import Progress, ScoreRun
from pipeline.score.score_stream import limit_malloc_arenas, prefetch
from pipeline.score.source import Source
from pipeline.score.summary import ScoreSummary
from pipeline.score.table_source import TableSource

# Rows per chunk. Measured with 21 numeric columns (1 M rows, `benchmarks.scoring`): 4 x 65,536 rows peaked at
# 1.3 GB RSS, 65,536 at 1,016-1,036 MB with the hidden-layer density terms, 32,768 at 796 MB for the same time.
CHUNK_ROWS = SCORE_CHUNK


def score_file(
    det: VAEAnomalyDetector,
    path: str | Path,
    out_dir: str | Path,
    model_uri: str = "",
    model_name: str | None = None,
    model_version: str | None = None,
    rule: FlagRule | None = None,
    label_column: str | None = None,
    f1_optimal: bool = False,
    *,
    chunk_rows: int = CHUNK_ROWS,
    read_rows: int | None = None,
    progress: Progress | None = None,
    torch_threads: int | None = None,
) -> ScoreSummary:
    """Score every row of ``path`` and write ``<out_dir>/<stem>.anomalies.csv`` atomically, streaming, and the
    batch's page ``<stem>.report.html`` beside it.

    Args:
        rule: how rows are flagged; default: p <= the model's alpha (its calibrated threshold).
        label_column: a 0/1 column (1 = anomaly) of the input, for precision/recall/F1/AUROC/AUPRC;
            defaults to the model's label column when the input has it.
        f1_optimal: with labels that include anomalies, flag at the F1-optimal threshold instead.
        chunk_rows: rows scored per chunk; rounded up to a multiple of ``SCORE_CHUNK``.
        read_rows: rows per read from the file (default ``chunk_rows``); any value gives the same report.
        progress: see :data:`Progress`.
        torch_threads: threads of the model while scoring (restored afterwards); default one core less
            than this process may use, at least 1: reading and writing run on the remaining core.

    Raises:
        InputError: unreadable file, schema mismatch (names column and row), a score that overflows,
            bad labels or level, or unwritable output.
    """
    chunk_rows = max(-(-chunk_rows // SCORE_CHUNK), 1) * SCORE_CHUNK
    return score_batch(
        det,
        TableSource(det, path, label_column, read_rows),
        report_path(out_dir, path),
        rule,
        f1_optimal,
        (model_uri, model_name, model_version),
        chunk_rows=chunk_rows,
        progress=progress,
        torch_threads=torch_threads,
    )


def score_batch(
    det: EnsembleDetector,
    src: Source,
    target: Path,
    rule: FlagRule | None = None,
    f1_optimal: bool = False,
    model: tuple[str, str | None, str | None] = ("", None, None),
    *,
    chunk_rows: int,
    progress: Progress | None = None,
    torch_threads: int | None = None,
) -> ScoreSummary:
    """Score every row of ``src`` into the report ``target`` (written atomically), its summary and its page
    ``<stem>.report.html``: the one scoring path of both kinds of input.

    Args:
        model: the model's URI, registered name and version, for the summary.
        chunk_rows: rows the source reads and the model scores at a time.
        torch_threads: threads of the model while scoring (restored afterwards); default one core less
            than this process may use, at least 1: reading and writing run on the remaining core.

    Raises:
        InputError: from the source, a level the calibration cannot reach, or unwritable output.
    """
    t0 = time.perf_counter()
    rule = rule or FlagRule("alpha", det.alpha)
    ensure_out_dir(target.parent)
    limit_malloc_arenas()
    run = ScoreRun(det, src, rule, f1_optimal, target.parent)
    with scoring_threads(torch_threads), ThreadPoolExecutor(max_workers=3, thread_name_prefix="vae-anomaly-io") as pool:
        digest = pool.submit(src.sha256)  # reads the input once more, beside the scoring
        try:
            with atomic_writer(target) as out:
                run.write_report(prefetch(src.chunks(chunk_rows, run.read_position), pool), out, pool, progress)
        except OSError as e:
            raise InputError(f"cannot write report {target}: {e.strerror or e}") from e
        input_sha256 = digest.result()
    summary = run.summary(target, input_sha256, *model, time.perf_counter() - t0)
    page = write_html_report(
        summary.to_dict(),
        run.histogram,
        run.top.rows,
        run.page_columns,
        summary.contact_sheet,
        src.missing_rows,
    )
    return dataclasses.replace(summary, report_html=str(page))


@contextlib.contextmanager
def scoring_threads(threads: int | None = None) -> Iterator[int]:
    """Run torch on ``threads`` (default :func:`model_threads`) inside the block; restore the previous count after.

    The thread policy of every scoring path: the CLI's :func:`score_file` and the MLflow pyfunc's predict
    (which MLflow's scoring server runs on a worker thread that otherwise keeps torch's default, all cores).
    Yields the thread count in use.
    """
    previous = torch.get_num_threads()
    n = threads or model_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)


def model_threads() -> int:
    """One core less than this process may use, at least 1.

    Measured on a shared 2-core machine: with 2 torch threads and the other core busy, scoring was
    up to 10x slower than with 1 thread; the spare core reads and writes in the meantime.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(cores - 1, 1)


def ensure_out_dir(path: str | Path) -> Path:
    """Create the report folder if needed.

    Raises:
        InputError: it cannot be created, or is not a writable folder.
    """
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise InputError(f"output folder {d} exists and is not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {d}: {e.strerror or e}") from e
    if not os.access(d, os.W_OK | os.X_OK):
        raise InputError(f"output folder {d} is not writable")
    return d
