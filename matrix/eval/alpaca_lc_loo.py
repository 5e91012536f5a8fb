"""Agreement of the length-control fit with the published AlpacaEval 2 leaderboard.

Leave-one-model-out: for each shipped annotation set with a published LC, the table is refitted
without that model (`alpaca_lc_difficulty`), its GLM is fitted (`alpaca_lc_glm`) and its LC is
compared with the published one. docs/evaluate.md lists the deviation for every set;
`scripts/fit_alpaca_difficulty.py --loo` prints that table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matrix.eval.alpaca_lc_data import BASELINE, leaderboard, load_annotation_sets, published_lc
from matrix.eval.alpaca_lc_difficulty import fit_length_control_table
from matrix.eval.alpaca_lc_glm import Pairwise, fit_length_controlled


@dataclass(frozen=True)
class Deviation:
    model: str
    published: float
    ours: float
    avg_length: float
    in_range: bool  # average answer length within a factor of two of the baseline's

    @property
    def deviation(self) -> float:
        return self.ours - self.published


def evaluable_models(sets: Mapping[str, Pairwise] | None = None) -> list[str]:
    """Sets with a published LC, the baseline itself excluded (its LC is 50 by construction)."""
    sets = load_annotation_sets() if sets is None else sets
    return [m for m in sets if m != BASELINE and published_lc(m) is not None]


def leave_one_out_deviations(
    models: Sequence[str] | None = None, **fit_kwargs: float
) -> list[Deviation]:
    """For each model: fit the table without it (annotations, coefficients and LC), fit its GLM,
    compare its LC with the published one. A new model's situation. `fit_kwargs` go to
    `fit_length_control_table` (ridge, lc_weight, win_rate_weight)."""
    sets = load_annotation_sets()
    _, full = fit_length_control_table(sets, **fit_kwargs)
    base_len = float(leaderboard()[BASELINE]["avg_length"])
    out = []
    for m in evaluable_models(sets) if models is None else models:
        table, _ = fit_length_control_table(sets, exclude=[m], init=full, **fit_kwargs)
        ours = fit_length_controlled(sets[m], table.difficulty, gamed=table.gamed)
        avg_len = float(leaderboard()[m]["avg_length"])
        out.append(
            Deviation(
                model=m,
                published=float(published_lc(m)),
                ours=ours.length_controlled_win_rate,
                avg_length=avg_len,
                in_range=base_len / 2 <= avg_len <= 2 * base_len,
            )
        )
    return out
