"""`--help` of every script is a short page: what the script does, the config groups with their
options, common overrides and where the docs are; not the ~900-line composed config."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# every config group of conf/ (conf/hydra/ holds Hydra's own groups, listed by --hydra-help)
GROUPS = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "hydra")


@pytest.mark.parametrize(
    ("command", "what", "doc"),
    [
        (["train.py"], "Train: post-train a base model", "docs/train.md"),
        (["simulate.py"], "Simulate: agents grounded in user profiles", "docs/simulate.md"),
        (["generate.py"], "Generate: MATRIX-Gen turns", "docs/generate.md"),
        (["evaluate.py"], "Evaluate: answer a benchmark", "docs/evaluate.md"),
        (["-m", "matrix.pipeline"], "The MATRIX loop", "docs/experiments.md"),
    ],
)
def test_help_is_a_short_page_naming_the_groups(command, what, doc):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, *command, "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) < 80, out.stdout
    assert lines[0].startswith(what)
    listed = {line.split(":")[0] for line in lines if ": " in line and "=" not in line}
    assert set(GROUPS) <= listed, set(GROUPS) - listed
    models = sorted(f.stem for f in (ROOT / "conf" / "model").glob("*.yaml"))
    assert f"model: {', '.join(models)}" in lines  # a group's options, as conf/ has them
    examples = [line for line in lines if line.strip().startswith("python ")]
    assert len(examples) == 5 and all(command[-1].removesuffix(".py") in e for e in examples)
    assert f"Docs: {doc}" in out.stdout
    assert "runs_dir:" not in out.stdout  # the composed config is not printed
