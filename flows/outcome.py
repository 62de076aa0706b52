"""Tasks return user errors as values, so Prefect does not log them as tracebacks.

A flow turns an :class:`UserError` into a Failed state with the one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UserError:
    """A failure caused by the input, the model URI or the tracking server."""

    message: str
    exit_code: int

    @classmethod
    def of(cls, e: Exception) -> UserError:
        """The error's first line, with any credentials of a URI redacted."""
        from flows.settings import redact

        text = str(e).strip()
        message = text.splitlines()[0] if text else type(e).__name__
        return cls(redact(message), int(getattr(e, "exit_code", 1)))


def user_errors() -> tuple[type[Exception], ...]:
    from flows.tracking import TrackingUnavailable
    from pipeline.errors import InputError, ModelError

    return (InputError, ModelError, TrackingUnavailable)
