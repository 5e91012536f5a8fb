"""Benchmarks share one small interface (see `base.Benchmark`); `BENCHMARKS` maps names to classes."""

from __future__ import annotations

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

__all__ = ["BENCHMARKS", "Benchmark"]
