"""Which product a command line asks for: tables (the default) or images (``--kind image`` or image inputs)."""

from __future__ import annotations

KINDS = ("table", "image")


def split_kind(argv: list[str]) -> tuple[str, list[str]]:
    """The kind a command line asks for, and the command line without ``--kind``.

    ``--kind image|table`` decides; without it the first input decides: a folder, an image file, a glob
    or an IDX file (``*-idx3-ubyte[.gz]``) means images. A ``.npz`` file is a table unless ``--kind image``.

    Raises:
        SystemExit(2): ``--kind`` with a value other than table or image.
    """
    from pathlib import Path

    from pipeline.images import IDX_PATTERN, looks_like_images

    rest, kind = [], None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--kind" and i + 1 < len(argv):
            kind, i = argv[i + 1], i + 2
            continue
        if a.startswith("--kind="):
            kind, i = a.split("=", 1)[1], i + 1
            continue
        rest.append(a)
        i += 1
    if kind is not None:
        if kind not in KINDS:
            import sys

            print(f"error: --kind must be one of {list(KINDS)}, got {kind!r}", file=sys.stderr)
            raise SystemExit(2)
        return kind, rest
    first = _first_input(rest)
    if (
        first is not None
        and Path(first).suffix.lower() != ".npz"
        and (looks_like_images(first) or IDX_PATTERN.search(first))
    ):
        return "image", rest
    return "table", rest


def _first_input(argv: list[str]) -> str | None:
    """The value of ``--data`` or the first positional argument (options' values are skipped)."""
    takes_value = False
    for i, a in enumerate(argv):
        if a == "--data" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--data="):
            return a.split("=", 1)[1]
        if takes_value:
            takes_value = False
            continue
        if a.startswith("-"):
            takes_value = "=" not in a and a not in ("--f1-optimal", "-h", "--help")
            continue
        return a
    return None
