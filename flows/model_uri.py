"""The one rule for model URIs: only the configured registry's ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION``."""

from __future__ import annotations

import re

from pipeline.errors import ModelError

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
REGISTRY_URI_FORMS = "models:/NAME@ALIAS or models:/NAME/VERSION"


def parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of a registry URI; exactly one of alias and version is set.

    Only the two registry forms are accepted: a ``runs:/``, ``models:/m-<id>``, ``file:`` or plain-path URI
    would load a folder from outside the registry (and run the code it ships).

    Raises:
        ModelError: any other form, or a name that is empty, ``.`` or ``..`` (exit code 3).
    """
    m = _ALIAS_URI.match(model_uri) or _VERSION_URI.match(model_uri)
    if m is None or m["name"].strip() in ("", ".", ".."):
        raise ModelError(
            f"model URI {model_uri!r} is not a registry URI: expected {REGISTRY_URI_FORMS} "
            "(models load only from the configured registry)"
        )
    groups = m.groupdict()
    return m["name"], groups.get("alias"), groups.get("version")
