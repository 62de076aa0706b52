"""Prefect flows, MLflow tracking and registry, the pyfunc adapter, and the CLIs.

Importing this package sets quiet, offline-safe defaults for Prefect and MLflow in the
environment (only where the user has not set them) before either is imported; see
``flows.settings.apply_env_defaults``.
"""

from flows.settings import apply_env_defaults

apply_env_defaults()
