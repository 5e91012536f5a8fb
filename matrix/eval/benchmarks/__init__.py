"""Benchmarks share one small interface (see `base.Benchmark`); `BENCHMARKS` maps the shipped
names to classes, and a block `eval.benchmarks.<any name>` with `_target_` names a benchmark
class of the user's (`benchmark_class`)."""

from __future__ import annotations

from typing import Any

from matrix.eval.benchmarks.alpaca_eval2 import AlpacaEval2
from matrix.eval.benchmarks.arena_hard import ArenaHard
from matrix.eval.benchmarks.base import Benchmark
from matrix.eval.benchmarks.code import MBPP, HumanEval
from matrix.eval.benchmarks.custom import Custom
from matrix.eval.benchmarks.mt_bench import MTBench
from matrix.eval.benchmarks.mt_bench_101 import MTBench101
from matrix.eval.benchmarks.safety import Safety

BENCHMARKS: dict[str, type[Benchmark]] = {
    b.name: b
    for b in (AlpacaEval2, ArenaHard, MTBench, MTBench101, HumanEval, MBPP, Safety, Custom)
}


def benchmark_class(name: str, bcfg: Any) -> type[Benchmark]:
    """The class of `eval.benchmarks.<name>`: its `_target_`, else the shipped benchmark of
    that name."""
    target = bcfg.get("_target_") if bcfg is not None else None
    if target:
        from hydra.utils import get_class

        return get_class(str(target))
    return BENCHMARKS[name]


def benchmark(name: str, bcfg: Any) -> Benchmark:
    """The benchmark `eval.benchmarks.<name>` configures (its options, less `_target_`)."""
    options = {k: v for k, v in (bcfg or {}).items() if not str(k).startswith("_")}
    return benchmark_class(name, bcfg)(options)


__all__ = ["BENCHMARKS", "Benchmark", "benchmark", "benchmark_class"]
