"""MLflow store: set-up, error translation, and resolving and loading registered models."""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.cli import one_line
from flows.model_uri import parse_model_uri
from flows.settings import artifact_root, redact, tracking_uri
from pipeline.errors import ModelError

if TYPE_CHECKING:
    from pipeline.detect.detector import VAEAnomalyDetector
    from pipeline.detect.image_detector import ImageVAEDetector

log = logging.getLogger(__name__)
PROJECT_DIR = Path(__file__).resolve().parents[2]


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached."""

    exit_code = 4


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version registered by a training run, with the alias set on it."""

    name: str
    version: str
    alias: str
    run_id: str
    model_uri: str


@dataclass
class ResolvedModel:
    """A registered version's detector, with the URI it was asked by and the version that URI resolved to."""

    detector: VAEAnomalyDetector | ImageVAEDetector
    uri: str
    name: str | None
    version: str | None


def setup(experiment: str | None = None) -> str:
    """Point MLflow at the configured store; create the experiment if needed. Returns the URI."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if experiment is not None:
        try:
            exp = mlflow.get_experiment_by_name(experiment)
            if exp is None:
                location = artifact_root().as_uri() if uri.startswith("sqlite:") else None
                mlflow.create_experiment(experiment, artifact_location=location)
            mlflow.set_experiment(experiment)
        except Exception as e:
            raise translate(e, uri) from e
    return uri


def translate(e: Exception, uri: str) -> Exception:
    """Connection failures, and answers that are not MLflow's, become TrackingUnavailable with a clean message.

    MLflow retries refused connections, timeouts and HTTP 408/429/5xx with exponential backoff
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``_BACKOFF_FACTOR``, set in flows.settings) before it raises.
    """
    text = f"{type(e).__name__}: {e}"
    if m := re.search(r"too many (\d{3}) error responses", text):
        retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "")
        return TrackingUnavailable(
            f"cannot reach the MLflow tracking server at {redact(uri)}: it answered "
            f"HTTP {m[1]} to every try ({retries} retries with backoff)"
        )
    if re.search(r"Connection|Max retries|timed out|refused|Name or service", text):
        return TrackingUnavailable(f"cannot reach the MLflow tracking server at {redact(uri)}")
    if answer := _not_mlflow_answer(e, text):
        status, what = answer
        if status in ("401", "403"):
            return TrackingUnavailable(
                f"the tracking server at {redact(uri)} refused the request ({what}): check "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"
            )
        return TrackingUnavailable(
            f"the server at {redact(uri)} is not an MLflow tracking server: {what}: check MLFLOW_TRACKING_URI"
        )
    return e


def _not_mlflow_answer(e: Exception, text: str) -> tuple[str, str] | None:
    """(HTTP status, what it answered) when an HTTP answer did not come from MLflow's REST API, else None.

    MLflow's server answers every REST error with JSON holding an ``error_code``; MLflow's client raises
    "API request to endpoint ... failed with error code 404 != 200" when the body is not JSON (another web
    server, a proxy page), and a RestException without ``error_code`` for foreign JSON (``{"detail": ...}``).
    """
    if m := re.search(r"API request to endpoint (\S+) failed with error code (\d{3})", text):
        return m[2], f"it answered HTTP {m[2]} to {m[1]} without MLflow's JSON error"
    if "API request to endpoint was successful but the response body was not in a valid JSON" in text:
        return "200", "it answered a REST call with a body that is not JSON"
    body = getattr(e, "json", None)
    if isinstance(body, dict) and "error_code" not in body:
        return "", f"it answered a REST call with JSON that is not MLflow's: {str(body)[:80]}"
    return None


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of ``e``'s message (at most ``limit`` characters), URI credentials redacted."""
    return redact(one_line(e, limit))


def _confined_source(client: Any, name: str, version: str) -> str:
    """The registry URI ``models:/NAME/VERSION`` to load, once the version's files are inside the store.

    A version registered from a local folder outside the store's artifact root (for the embedded store:
    ``<project>/mlartifacts``) is refused; a tracking server's proxied artifacts are inside by construction.

    Raises:
        ModelError: the version's files lie outside the artifact root.
    """
    from urllib.parse import unquote, urlparse

    location = client.get_model_version_download_uri(name, version)
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        local = Path(unquote(parsed.path) if parsed.scheme else location).resolve()
        root = artifact_root().resolve()
        if not local.is_relative_to(root):
            raise ModelError(
                f"its files are stored at {local}, outside the store's artifact root "
                f"{root}: refused (models load only from the configured store)"
            )
    return f"models:/{name}/{version}"


@dataclass(frozen=True)
class ModelFacts:
    """What a registered version is, read from the registry without loading it: its kind and table schema."""

    name: str
    version: str
    kind: str
    schema: dict[str, Any] | None


def _version(client: Any, name: str, alias: str | None, version: str | None) -> str:
    if alias is not None:
        return str(client.get_model_version_by_alias(name, alias).version)
    client.get_model_version(name, version)
    return str(version)


def _not_found(client: Any, model_uri: str, name: str, e: Exception, uri: str) -> ModelError:
    """A missing model, alias or version, with the names, aliases or versions the registry does hold."""
    try:
        models = [m.name for m in client.search_registered_models(max_results=50)]
        if name not in models:
            known = f"registered models: {', '.join(sorted(models)[:20]) or 'none'}"
        else:
            model = client.get_registered_model(name)
            aliases = ", ".join(f"@{a} (v{v})" for a, v in sorted(model.aliases.items())) or "none"
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
            known = f"{name} has aliases {aliases} and versions {', '.join(map(str, versions[-10:])) or 'none'}"
    except Exception:  # the hint is a courtesy: the error stands without it
        known = first_line(e)
    return ModelError(f"model {model_uri} not found in the registry at {redact(uri)}: {known}")


def _registry_error(
    e: Exception, from_mlflow: bool, client: Any, model_uri: str, name: str, uri: str, done: str
) -> Exception:
    """What a failed registry look-up raises: TrackingUnavailable for a server that cannot be reached; for
    MLflow's own errors a model not found (listing what exists); else the model "cannot be read/loaded" (a
    corrupt or foreign model folder), in one line, never with the credentials of the URI."""
    t = translate(e, uri)
    if isinstance(t, TrackingUnavailable):
        return t
    if from_mlflow:
        return _not_found(client, model_uri, name, e, uri)
    return ModelError(f"model {model_uri} cannot be {done}: {type(e).__name__}: {first_line(e)}")


def model_facts(model_uri: str) -> ModelFacts:
    """Resolve ``model_uri`` in the registry and read the version's kind and (tables) schema, without
    loading the model: for checking inputs before a flow starts.

    Raises:
        ModelError: another URI form, or an unknown model name, alias or version (listing those that exist).
        TrackingUnavailable: the tracking server cannot be reached.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    setup()
    name, alias, version = parse_model_uri(model_uri)
    uri = mlflow.get_tracking_uri()
    client = mlflow.MlflowClient()
    try:
        version = _version(client, name, alias, version)
        mv = client.get_model_version(name, version)
        kind = mv.tags.get("kind", "table")
        schema = None if kind == "image" else mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/schema.json")
    except ModelError:
        raise
    except Exception as e:
        raise _registry_error(e, isinstance(e, MlflowException), client, model_uri, name, uri, "read") from e
    return ModelFacts(name, version, kind, schema)


def load_model(model_uri: str) -> ResolvedModel:
    """Resolve ``model_uri`` (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) in the configured registry
    and load its detector through the pyfunc; nothing outside the store is ever loaded.

    Raises:
        ModelError: another URI form, an unknown model name, alias or version, files outside the store,
            or missing artifacts.
        TrackingUnavailable: the tracking server cannot be reached.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(model_uri)
    uri = mlflow.get_tracking_uri()
    # MLflow prepends the model's code snapshot (code_paths) to sys.path: later imports in this process, and
    # Dask worker processes (which start with a copy of sys.path), would load that old copy of our packages.
    path = list(sys.path)
    client = mlflow.MlflowClient()
    try:
        version = _version(client, name, alias, version)
        model = mlflow.pyfunc.load_model(_confined_source(client, name, version))
    except ModelError as e:  # files outside the store, a poisoned or incomplete model folder
        raise ModelError(f"model {model_uri} cannot be loaded: {first_line(e, 1000)}") from e
    except Exception as e:
        raise _registry_error(e, isinstance(e, MlflowException), client, model_uri, name, uri, "loaded") from e
    finally:
        sys.path[:] = path
    python_model = model.unwrap_python_model()
    return ResolvedModel(python_model.detector, model_uri, name, version)


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry a failure that is neither the input's, the model's, nor an unreachable
    tracking server's (MLflow has already retried those HTTP calls with backoff)."""
    try:
        state.result()
    except (ModelError, TrackingUnavailable):
        return False
    except Exception as e:
        from pipeline.errors import InputError

        return not isinstance(e, InputError)
    return False


RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": [1, 5], "retry_condition_fn": is_transient}
"""Task options of the flows' MLflow and file tasks: two retries of a transient failure, after 1 s and 5 s."""
