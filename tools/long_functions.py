"""Functions longer than the project's limit (60 lines, docstring and comments included).

    python -m tools.long_functions              # list module:function:lines over 60 in matrix/
    python -m tools.long_functions --max 80 matrix/gen
    python -m tools.long_functions --check      # exit 1 if one is over and not in ALLOWED

A function's length is its `def` line to its last line; a nested function counts on its own
and inside its parent. `ALLOWED` names the few functions kept whole on purpose, each with why
(a stage's main loop that reads better in one piece); `tests/tools/test_long_functions.py`
fails when any other function passes the limit.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60

# "path/to/module.py:Qualified.name" -> why it stays one function
ALLOWED: dict[str, str] = {
    "matrix/eval/alpaca_lc_difficulty.py:fit_instruction_difficulty": (
        "a 20-line docstring states the objective the 44 lines of code minimise; the loss and "
        "its gradient read best next to the arrays they close over"
    ),
}


@dataclass(frozen=True)
class LongFunction:
    path: str  # relative to the repository root
    name: str  # qualified: Class.method, outer.inner
    line: int
    lines: int

    @property
    def key(self) -> str:
        return f"{self.path}:{self.name}"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.name}: {self.lines} lines"


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                yield name, node
            yield from _functions(node, f"{name}.")
        else:
            yield from _functions(node, prefix)


def long_functions(source: str, path: str, limit: int = LIMIT) -> list[LongFunction]:
    """The functions of one module's `source` longer than `limit` lines."""
    out = []
    for name, node in _functions(ast.parse(source, filename=path)):
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        n = node.end_lineno - first + 1
        if n > limit:
            out.append(LongFunction(path, name, node.lineno, n))
    return out


def scan(paths: list[Path], limit: int = LIMIT) -> list[LongFunction]:
    found = []
    for top in paths:
        for f in sorted(top.rglob("*.py")) if top.is_dir() else [top]:
            rel = f.resolve().relative_to(ROOT).as_posix()
            found += long_functions(f.read_text(encoding="utf-8"), rel, limit)
    return sorted(found, key=lambda x: -x.lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.long_functions", description=__doc__)
    ap.add_argument("paths", nargs="*", type=Path, default=[ROOT / "matrix"])
    ap.add_argument("--max", type=int, default=LIMIT, help="longest allowed, in lines")
    ap.add_argument("--check", action="store_true", help="exit 1 on any not in ALLOWED")
    args = ap.parse_args(argv)
    found = scan(args.paths, args.max)
    for f in found:
        why = ALLOWED.get(f.key)
        print(f"{f}" + (f"  (allowed: {why})" if why else ""))
    over = [f for f in found if f.key not in ALLOWED]
    return 1 if args.check and over else 0


if __name__ == "__main__":
    sys.exit(main())
