"""MLflow for every flow, through one API: set-up, training runs, registry look-ups, scoring and decision runs.

Flows import this package (``from flows import tracking``) and call only the names below.
"""

from flows.settings import redact, tracking_uri
from flows.tracking.runs import alias_version, log_decision, log_explore_run, log_files, log_scoring
from flows.tracking.store import (
    PROJECT_DIR,
    RETRIES,
    ModelFacts,
    RegisteredVersion,
    ResolvedModel,
    TrackingUnavailable,
    is_transient,
    load_model,
    model_facts,
    setup,
    translate,
)
from flows.tracking.training import log_training_run

__all__ = [
    "PROJECT_DIR",
    "RETRIES",
    "ModelFacts",
    "RegisteredVersion",
    "ResolvedModel",
    "TrackingUnavailable",
    "alias_version",
    "is_transient",
    "load_model",
    "log_decision",
    "log_explore_run",
    "log_files",
    "log_scoring",
    "log_training_run",
    "model_facts",
    "redact",
    "setup",
    "tracking_uri",
    "translate",
]
