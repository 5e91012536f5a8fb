"""Arena-Hard scores and intervals against arena-hard-auto's own scoring code.

`data/arena_hard_upstream/` (SOURCE.md there) holds 500 judged questions (two games each) of
two models against the gpt-4-0314 baseline, the style counts of the three models' published
answers, and the scores upstream's `show_result.py` computes from them, with and without
style control (`expected.json`). Upstream reports the bootstrap mean (median with style
control) and the 5% and 95% bootstrap quantiles; the project's `bradley_terry` is run at that
confidence (0.90) on the same battles. The goal: every score and interval end within 0.5
points of upstream's.
"""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from matrix.eval.bradley_terry import Battles, bradley_terry, style_differences, verdict_to_battles

DATA = Path(__file__).parent / "data" / "arena_hard_upstream"
BASELINE = "gpt-4-0314"
GOAL = 0.5  # points on the 0-100 scale, each score and each interval end
N_BOOTSTRAP = 1000


@pytest.fixture(scope="module")
def battles():
    with gzip.open(DATA / "judgments.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    with gzip.open(DATA / "style_counts.json.gz", "rt") as f:
        counts = json.load(f)
    records, model_counts, base_counts = [], [], []
    for r in rows:
        # game 1 shows the baseline as A, game 2 the model (upstream's gen_judgment)
        for verdict, model_is_a in zip(r["games"], (False, True), strict=True):
            for outcome in verdict_to_battles(verdict, model_is_a):
                records.append((r["model"], BASELINE, outcome))
                model_counts.append(counts[r["model"]][r["uid"]])
                base_counts.append(counts[BASELINE][r["uid"]])
    return records, np.array(model_counts, float), np.array(base_counts, float)


@pytest.fixture(scope="module")
def expected():
    return json.loads((DATA / "expected.json").read_text())


def _check(result, upstream: dict[str, list[float]]) -> None:
    models = [m for m in upstream if m != BASELINE]
    assert len(models) == 2
    for m in models:
        ours = [result.scores[m], result.lower[m], result.upper[m]]
        assert np.abs(np.subtract(ours, upstream[m])).max() <= GOAL, (m, ours, upstream[m])


def test_scores_and_intervals_match_upstream(battles, expected):
    records, _, _ = battles
    assert len(records) > 2000  # strong verdicts count three times
    res = bradley_terry(
        Battles.from_records(records), BASELINE, n_bootstrap=N_BOOTSTRAP, confidence=0.90
    )
    _check(res, expected["plain"])


def test_style_controlled_scores_and_intervals_match_upstream(battles, expected):
    records, model_counts, base_counts = battles
    style = style_differences(model_counts, base_counts, ("length", "markdown"))
    res = bradley_terry(
        Battles.from_records(records, style=style),
        BASELINE,
        n_bootstrap=N_BOOTSTRAP,
        confidence=0.90,
    )
    _check(res, expected["style"])
    # style control moves gpt-4-0613 by more than the goal: a check that ignored the
    # covariates would fail
    plain = expected["plain"]["gpt-4-0613"][0]
    assert abs(expected["style"]["gpt-4-0613"][0] - plain) > 2 * GOAL
