"""Shared CLI plumbing: one-line errors and exit codes, never a traceback for a user error."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_MODEL, EXIT_TRACKING = 0, 1, 2, 3, 4


_verbose = False


class ArgumentParser(argparse.ArgumentParser):
    """argparse that exits 2 with a one-line message, and takes ``-v/--verbose`` for :func:`run`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.add_help:  # not a parents=[...] parser, whose options its children copy
            self.add_argument("-v", "--verbose", action="store_true", help="also show Prefect's and MLflow's logs")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        global _verbose
        ns = super().parse_args(args, namespace)
        _verbose = bool(ns.__dict__.pop("verbose", False)) or _verbose
        return ns

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message}\n")


class _Quiet(logging.Filter):
    """Lets through this project's warnings and errors; Prefect's and MLflow's records only when critical
    (their INFO lines and the traceback of a failed task would bury the one-line error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in ("prefect", "mlflow", "alembic", "httpx", "distributed"):
            return record.levelno >= logging.CRITICAL
        return record.levelno >= logging.WARNING


def quiet_logs() -> None:
    """Console logs of a CLI run: with ``--verbose`` INFO lines; otherwise this project's warnings and errors,
    and MLflow's warnings (Prefect's console is quieted by :func:`orchestration`)."""
    if _verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def orchestration(module: str) -> Any:
    """Import a flow module (Prefect, MLflow, torch: seconds) once the arguments and inputs are checked.

    Without ``--verbose`` Prefect's console shows nothing below CRITICAL: its INFO lines and a failed task's
    traceback would bury the one-line error. Logs a Prefect server receives (``PREFECT_API_URL``) are kept.
    """
    import importlib

    mod = importlib.import_module(module)
    if not _verbose:
        from prefect.logging.configuration import ensure_logging_setup

        ensure_logging_setup()
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, _Quiet) for f in handler.filters):
                handler.addFilter(_Quiet())
    return mod


def add_dask_arguments(p: argparse.ArgumentParser, title: str) -> None:
    """The options of :class:`flows.config.DaskOptions`, as one argument group."""
    dask = p.add_argument_group(title)
    dask.add_argument("--dask-address", default=None, help="scheduler of an existing cluster, e.g. tcp://host:8786")
    dask.add_argument("--dask-workers", type=int, default=None, help="start a LocalCluster with N workers")
    dask.add_argument(
        "--dask-threads",
        dest="dask_processes",
        action="store_false",
        help="LocalCluster workers are threads of this process, not processes",
    )


def csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def validation_message(e: ValidationError) -> str:
    """Each error of a config in a few words: the field, what is wrong, and the value given (a check across
    fields names its own values)."""
    parts = []
    for err in e.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["loc"]:
            parts.append(f"{'.'.join(str(x) for x in err['loc'])}: {msg} (got {err.get('input')!r})")
        else:
            parts.append(msg)
    return "; ".join(parts)


DEBUG_ENV = "VAE_ANOMALY_DEBUG"


def run(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; map known errors to one line on stderr and an exit code.

    An unexpected exception (a bug) is one line too, exit 1; with ``VAE_ANOMALY_DEBUG=1`` it is re-raised
    with its traceback.
    """
    from flows.settings import redact
    from pipeline.errors import InputError, ModelError

    quiet_logs()
    try:
        return body()
    except ValidationError as e:
        print(f"{prog}: error: {validation_message(e)}", file=sys.stderr)
        return EXIT_INPUT
    except (InputError, ModelError) as e:  # a task's error, re-raised by the flow
        print(f"{prog}: error: {redact(one_line(e))}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_FAILURE)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        code = getattr(e, "exit_code", None)
        if code is not None:  # TrackingUnavailable and other errors that carry their own code
            print(f"{prog}: error: {redact(one_line(e))}", file=sys.stderr)
            return int(code)
        if os.environ.get(DEBUG_ENV):
            raise
        print(
            f"{prog}: error: unexpected {type(e).__name__}: {redact(one_line(e))} "
            f"(a bug: set {DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


def one_line(e: BaseException, limit: int = 500) -> str:
    """The first line of an exception's message (at most ``limit`` characters)."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


def print_registered(summary: dict[str, Any]) -> None:
    """The training CLIs' output: the registered version and alias, then every summary field."""
    print(
        f"registered {summary['model_name']} version {summary['version']} as @{summary['alias']} "
        f"(threshold {summary['threshold']:.4g} at alpha={summary['alpha']})"
    )
    for k, v in summary.items():
        print(f"  {k}: {v}")
