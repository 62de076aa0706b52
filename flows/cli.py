"""Shared CLI plumbing: one-line errors and exit codes, never a traceback for a user error."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from flows.outcome import UserError

EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_MODEL, EXIT_TRACKING = 0, 1, 2, 3, 4


class ArgumentParser(argparse.ArgumentParser):
    """argparse that exits 2 with a one-line message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message}\n")


def csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


DEBUG_ENV = "VAE_ANOMALY_DEBUG"


def run(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; map known errors to one line on stderr and an exit code.

    An unexpected exception (a bug) is one line too, exit 1; with ``VAE_ANOMALY_DEBUG=1`` it is re-raised
    with its traceback.
    """
    from flows.settings import redact
    from pipeline.errors import InputError, ModelError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return body()
    except ValidationError as e:
        print(f"{prog}: error: {validation_message(e)}", file=sys.stderr)
        return EXIT_INPUT
    except (InputError, ModelError) as e:
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


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 500 characters)."""
    text = str(e).strip()
    return text.splitlines()[0][:500] if text else type(e).__name__


def user_error(state: Any) -> UserError | None:
    """The :class:`UserError` a failed flow run returned, or None (an unexpected failure)."""
    try:
        data = state.result(raise_on_failure=False)
    except Exception:
        return None
    return data if isinstance(data, UserError) else None


def flow_failure(prog: str, state: Any) -> int | None:
    """For a failed flow run: print its user error as one line and return the exit code; re-raise an
    unexpected failure. None when the run did not fail."""
    from flows.settings import redact

    if not state.is_failed():
        return None
    err = user_error(state)
    if err is None:
        state.result()  # re-raise the unexpected exception
        raise RuntimeError(f"flow run failed without an exception: {state}")
    print(f"{prog}: error: {redact(err.message)}", file=sys.stderr)
    return err.exit_code


def print_registered(summary: dict[str, Any]) -> None:
    """The training CLIs' output: the registered version and alias, then every summary field."""
    print(
        f"registered {summary['model_name']} version {summary['version']} as @{summary['alias']} "
        f"(threshold {summary['threshold']:.4g} at alpha={summary['alpha']})"
    )
    for k, v in summary.items():
        print(f"  {k}: {v}")


def finish_scoring(prog: str, state: Any, print_summary: Callable[[dict[str, Any]], None]) -> int:
    """The scoring CLIs' ending: print each file's summary and each file's user error (one line each);
    the exit code is the highest of those errors' (0 when every file was scored). A failure that is not
    a user error is re-raised."""
    from flows.settings import redact

    data = state.result(raise_on_failure=False)
    if state.is_failed() and not (isinstance(data, list) and any(isinstance(d, UserError) for d in data)):
        state.result()  # an unexpected failure: re-raise it
    items = data if isinstance(data, list) else []
    for s in items:
        if isinstance(s, dict):
            print_summary(s)
    errs = [e for e in items if isinstance(e, UserError)]
    for e in errs:
        print(f"{prog}: error: {redact(e.message)}", file=sys.stderr)
    return max((e.exit_code for e in errs), default=EXIT_OK)
