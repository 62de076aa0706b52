"""The machine a benchmark runs on: its CPUs and their name, torch threads, GPU, library versions."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def environment(argv: Sequence[str], threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    return {
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.tabular", *argv]),
        "cwd": str(Path.cwd()),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpus_available": available_cpus(),
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "processor": platform.processor(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "pyod": _version("pyod"),
            "scikit-learn": _version("scikit-learn"),
            "numpy": np.__version__,
            "pandas": _version("pandas"),
        },
    }
