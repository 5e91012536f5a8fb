"""Every manifest names the package versions and the lock a result came from."""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

import pytest

from matrix.core.environment import LOCK_RECORD, environment, lock_pins

ROOT = Path(__file__).resolve().parents[2]


def test_the_packages_that_shape_results_are_named_with_their_versions(tmp_path: Path) -> None:
    env = environment(str(tmp_path))  # a venv installed without the lock
    for name in ("torch", "transformers", "lightning", "numpy", "scipy"):
        assert env["packages"][name] == md.version(name)
    assert env["lock"] is None and env["differs_from_lock"] == {}


def test_a_version_that_is_not_the_locks_is_listed(tmp_path: Path) -> None:
    lock = tmp_path / "cpu.txt"
    lock.write_text(f"numpy=={md.version('numpy')}\ntorch==0.0.1\n# scipy==0.0.1\n")
    (tmp_path / LOCK_RECORD).write_text(json.dumps({"path": str(lock), "sha256": "abc"}))
    env = environment(str(tmp_path))
    assert env["lock"] == {"path": str(lock), "sha256": "abc"}
    assert env["differs_from_lock"] == {
        "torch": {"installed": md.version("torch"), "lock": "0.0.1"}
    }


def test_the_locks_pin_every_package_of_the_project() -> None:
    """requirements/cpu.txt and gpu.txt pin the same versions of everything but torch's CUDA
    wheels, and every dependency pyproject.toml names (`make lock` keeps them so)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from packaging.requirements import Requirement

    cpu, gpu = (lock_pins(ROOT / "requirements" / f"{k}.txt") for k in ("cpu", "gpu"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = [Requirement(r) for r in project["dependencies"]]
    for extra in ("dev", "embedded", "sweep", "report"):
        needed += [Requirement(r) for r in project["optional-dependencies"][extra]]
    for req in needed:
        name = req.name.lower().replace("_", "-")
        assert name in cpu, f"{name} is not in requirements/cpu.txt: run make lock"
        assert req.specifier.contains(cpu[name].split("+")[0]), (name, cpu[name], req)
    assert cpu["torch"].endswith("+cpu") and gpu["torch"] == cpu["torch"].split("+")[0]
    assert {k: v for k, v in gpu.items() if k in cpu and k != "torch"} == {
        k: v for k, v in cpu.items() if k != "torch"
    }
