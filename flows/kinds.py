"""What kind of data an input or a model is: a table or images."""

from __future__ import annotations

from pathlib import Path

KINDS = ("table", "image")
DEFAULT_MODEL_NAME = {"table": "vae-anomaly", "image": "vae-anomaly-images"}


def input_kind(first: str) -> str:
    """The kind of data an input holds: images for a folder, an image file, a glob or an IDX file
    (``*-idx3-ubyte[.gz]``); a table otherwise (a ``.npz`` file is a table unless the kind says image)."""
    from pipeline.data.images import IDX_PATTERN, looks_like_images

    if Path(first).suffix.lower() != ".npz" and (looks_like_images(first) or IDX_PATTERN.search(first)):
        return "image"
    return "table"


def check_model_kind(kind: str, model_kind: str, model_uri: str) -> None:
    """Refuse to score ``kind`` data (table or image) with a model of the other kind.

    Raises:
        InputError: the model is not a ``kind`` model; the message says which to give.
    """
    if model_kind == kind:
        return
    from pipeline.errors import InputError

    raise InputError(
        f"the inputs are {kind}s but model {model_uri} is {'an' if model_kind == 'image' else 'a'} "
        f"{model_kind} model: give a{'n image' if kind == 'image' else ' table'} model with --model, "
        f"or {model_kind}s to score"
    )
