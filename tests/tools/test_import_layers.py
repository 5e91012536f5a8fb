"""The layers of matrix import downward only, and no package has an import cycle between its
parts: the import-linter contracts in .importlinter hold on the tree (`make lint` runs them
too), and an upward import or a new cycle breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"  # import-linter, the dev extra


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # lint-imports puts its working directory first on sys.path: it reads `root`'s matrix/
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_every_contract() -> None:
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_an_upward_import_and_a_cycle_break_the_contracts(tmp_path: Path) -> None:
    shutil.copytree(
        ROOT / "matrix",
        tmp_path / "matrix",
        ignore=shutil.ignore_patterns("__pycache__", "data"),
    )
    shutil.copy(ROOT / ".importlinter", tmp_path)
    # common imports core (upward), and two modules of core import each other (lazily)
    (tmp_path / "matrix" / "common" / "upward.py").write_text("import matrix.core.registry\n")
    (tmp_path / "matrix" / "core" / "cycle_a.py").write_text("import matrix.core.cycle_b\n")
    (tmp_path / "matrix" / "core" / "cycle_b.py").write_text(
        "def f():\n    import matrix.core.cycle_a\n"
    )
    out = _lint_imports(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "matrix.common is not allowed to import matrix.core" in out.stdout
    assert "matrix.common.upward -> matrix.core.registry" in out.stdout
    assert "No cycles are allowed in matrix.core" in out.stdout
    assert "2 broken" in out.stdout
