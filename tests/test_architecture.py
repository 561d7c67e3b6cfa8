"""The import contracts in pyproject.toml (stages run one way; results and render never import
torch): `lint-imports` passes on this checkout and fails on a planted break."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package and pyproject.toml under `root` (not an installed copy)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=60)


def test_the_import_contracts_hold():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 kept, 0 broken" in proc.stdout


def broken(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess:
    """lint-imports on a copy of the package with `line` appended to `module` (a path under reportgen/)."""
    shutil.copytree(ROOT / "reportgen", tmp_path / "reportgen", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / "reportgen" / module
    path.write_text(path.read_text() + f"\n{line}\n")
    return lint_imports(tmp_path)


def test_a_renderer_importing_torch_breaks_a_contract(tmp_path):
    proc = broken(tmp_path, "render/tables.py", "import torch")
    assert proc.returncode == 1
    assert "reportgen.render.tables -> torch" in proc.stdout


def test_a_render_module_importing_a_higher_one_breaks_a_contract(tmp_path):
    proc = broken(tmp_path, "render/site.py", "import reportgen.render.report")
    assert proc.returncode == 1
    assert "reportgen.render.site -> reportgen.render.report" in proc.stdout
