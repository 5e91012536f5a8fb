"""The software a result came from, for every stage's manifest: the installed versions of the
packages that shape results, and the lock (requirements/*.txt) the venv was installed from.

`scripts/install.sh` writes `<venv>/matrix-lock.json` (the lock's path and sha256) after it
installs a lock; a venv installed any other way records `lock: null`. Versions that differ
from that lock (a package upgraded by hand) are listed under `differs_from_lock`.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import json
import sys
from pathlib import Path
from typing import Any

# What changes numbers: the model and training stack, the numeric libraries, the server.
SHAPING = (
    "torch",
    "transformers",
    "lightning",
    "accelerate",
    "peft",
    "tokenizers",
    "sentence-transformers",
    "k-means-constrained",
    "numpy",
    "scipy",
    "vllm",
    "flash-attn",
    "openai",
)
LOCK_RECORD = "matrix-lock.json"


def installed(names: tuple[str, ...] = SHAPING) -> dict[str, str]:
    """Installed version of each of `names` that is installed."""
    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def lock_pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a lock file, by normalised name."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[_norm(name)] = version.strip()
    return pins


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@functools.cache
def environment(prefix: str = sys.prefix) -> dict[str, Any]:
    """`{"packages": {...}, "lock": {"path", "sha256"} | None, "differs_from_lock": {...}}` of
    the venv at `prefix` (this one)."""
    packages = installed()
    record = Path(prefix) / LOCK_RECORD
    lock = None
    differs: dict[str, dict[str, str]] = {}
    if record.is_file():
        try:
            lock = json.loads(record.read_text(encoding="utf-8"))
            pins = lock_pins(Path(lock["path"]))
        except (OSError, ValueError, KeyError, TypeError):
            pins = {}
        for name, have in packages.items():
            want = pins.get(_norm(name))
            if want is not None and want != have:
                differs[name] = {"installed": have, "lock": want}
    return {"packages": packages, "lock": lock, "differs_from_lock": differs}
