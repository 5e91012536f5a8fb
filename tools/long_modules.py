"""Modules longer than the project's limit (350 lines, docstring and comments included).

    python -m tools.long_modules                # list path: lines over 350 in matrix/
    python -m tools.long_modules --max 300 matrix/sim
    python -m tools.long_modules --check        # exit 1 on one over and not in ALLOWED_MODULES,
                                                # or on an ALLOWED_MODULES entry no longer over

A module is one idea that reads top to bottom; past 350 lines it is usually two. A module's
length is its number of lines. `ALLOWED_MODULES` names the modules kept longer on purpose,
each with why; an entry whose module is gone or back under the limit is stale and fails the
check too, so the list only shrinks. `tests/tools/test_long_modules.py` runs the check.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 350

# "path/to/module.py" -> why it stays one module
ALLOWED_MODULES: dict[str, str] = {}


@dataclass(frozen=True)
class LongModule:
    path: str  # relative to the repository root
    lines: int

    def __str__(self) -> str:
        return f"{self.path}: {self.lines} lines"


def _modules(paths: list[Path], root: Path) -> list[tuple[str, Path]]:
    files = []
    for top in paths:
        for f in sorted(top.rglob("*.py")) if top.is_dir() else [top]:
            files.append((f.resolve().relative_to(root.resolve()).as_posix(), f))
    return files


def scan(paths: list[Path], limit: int = LIMIT, root: Path = ROOT) -> list[LongModule]:
    """The modules under `paths` longer than `limit` lines, longest first."""
    found = []
    for rel, f in _modules(paths, root):
        n = len(f.read_text(encoding="utf-8").splitlines())
        if n > limit:
            found.append(LongModule(rel, n))
    return sorted(found, key=lambda m: -m.lines)


def problems(
    paths: list[Path],
    limit: int = LIMIT,
    root: Path = ROOT,
    allowed: dict[str, str] = ALLOWED_MODULES,
) -> list[str]:
    """What `--check` fails on: each module over `limit` that `allowed` does not name, and
    each entry of `allowed` under `paths` whose module is gone or no longer over `limit`."""
    found = scan(paths, limit, root)
    over = [
        f"{m}: split it (or add it to ALLOWED_MODULES with why)"
        for m in found
        if m.path not in allowed
    ]
    long = {m.path for m in found}
    tops = [p.resolve().relative_to(root.resolve()).as_posix() for p in paths]
    stale = [
        f"{key}: stale ALLOWED_MODULES entry (gone or not over {limit} lines): remove it"
        for key in sorted(allowed)
        if key not in long and any(key == t or key.startswith(f"{t}/") for t in tops)
    ]
    return over + stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.long_modules", description=__doc__)
    ap.add_argument("paths", nargs="*", type=Path, default=[ROOT / "matrix"])
    ap.add_argument("--max", type=int, default=LIMIT, help="longest allowed, in lines")
    ap.add_argument("--check", action="store_true", help="exit 1 on any problem (see above)")
    args = ap.parse_args(argv)
    for m in scan(args.paths, args.max):
        why = ALLOWED_MODULES.get(m.path)
        print(f"{m}" + (f"  (allowed: {why})" if why else ""))
    if not args.check:
        return 0
    found = problems(args.paths, args.max)
    for p in found:
        print(p, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
