"""Imports flow one way: flows -> pipeline -> vae; vae and pipeline never import prefect or mlflow."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "vae": {"prefect", "mlflow", "pipeline", "flows", "pandas", "sklearn"},
    "pipeline": {"prefect", "mlflow", "flows"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upstream_layers(package):
    for path in (ROOT / package).rglob("*.py"):
        bad = _imports(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_vae_and_pipeline_import_without_prefect_or_mlflow():
    code = (
        "import sys, pipeline.detect.detector, pipeline.score.scoring, vae; "
        "bad = [m for m in ('prefect', 'mlflow') if m in sys.modules]; sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
