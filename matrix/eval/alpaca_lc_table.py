"""The shipped AlpacaEval 2 length-control table, and the LC win rate of a run with it.

`data/alpaca_eval_2/length_control_v1.csv` holds the instruction difficulty and the gamed rows
that `alpaca_lc_difficulty.fit_length_control_table` fits (`scripts/fit_alpaca_difficulty.py`
writes it); `length_controlled_win_rate` fits the per-model GLM (`alpaca_lc_glm`) with it.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Sequence

import numpy as np

from matrix.eval.alpaca_lc_data import GAMED_BASELINES
from matrix.eval.alpaca_lc_glm import (
    GamedRows,
    GLMFit,
    LengthControlTable,
    Pairwise,
    fit_length_controlled,
)
from matrix.eval.datafiles import read_csv
from matrix.eval.winrate import preferences_to_unit

TABLE_FILE = "alpaca_eval_2/length_control_v1.csv"


def table_to_csv(table: LengthControlTable) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["index", "instruction_difficulty"]
    for g in GAMED_BASELINES:
        header += [f"{g}_std_delta_len", f"{g}_preference"]
    w.writerow(header)
    for i, d in enumerate(table.difficulty):
        row = [i, f"{d:.10f}"]
        for g in table.gamed:
            row += [f"{g.std_delta_len[i]:.10f}", f"{g.preference[i]:.10f}"]
        w.writerow(row)
    return buf.getvalue()


@functools.cache
def bundled_table() -> LengthControlTable:
    """The shipped difficulty table and gamed rows (`scripts/fit_alpaca_difficulty.py`)."""
    rows = read_csv(TABLE_FILE)
    d = np.array([float(r["instruction_difficulty"]) for r in rows])
    gamed = tuple(
        GamedRows(
            np.array([float(r[f"{g}_preference"]) for r in rows]),
            np.array([float(r[f"{g}_std_delta_len"]) for r in rows]),
            d,
        )
        for g in GAMED_BASELINES
    )
    return LengthControlTable(d, gamed)


def bundled_difficulty() -> np.ndarray:
    """Instruction difficulty, 805 values in instruction order (the shipped table)."""
    return bundled_table().difficulty


def length_controlled_win_rate(
    preferences: Sequence[float],
    model_outputs: Sequence[str],
    baseline_outputs: Sequence[str],
    rows: Sequence[int] | None = None,
    table: LengthControlTable | None = None,
) -> GLMFit:
    """LC win rate for preferences in [1, 2] on the AlpacaEval instructions `rows` (all 805 by
    default), with the shipped table unless `table` is given."""
    pairs = Pairwise(
        preference=preferences_to_unit(preferences),
        len_model=np.array([len(o) for o in model_outputs]),
        len_baseline=np.array([len(o) for o in baseline_outputs]),
    )
    table = bundled_table() if table is None else table
    if rows is not None:
        table = table.subset(np.asarray(rows))
    return fit_length_controlled(pairs, table.difficulty, gamed=table.gamed)
