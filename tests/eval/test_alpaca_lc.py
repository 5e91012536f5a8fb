import numpy as np
import pytest

from matrix.eval.alpaca_lc_data import (
    BASELINE,
    BUNDLED_MODELS,
    leaderboard,
    load_annotation_sets,
    load_bundled_annotations,
    published_glm_weights,
    published_lc,
)
from matrix.eval.alpaca_lc_difficulty import fit_length_control_table, gamed_rows
from matrix.eval.alpaca_lc_glm import GamedRows, Pairwise, fit_length_controlled
from matrix.eval.alpaca_lc_loo import evaluable_models, leave_one_out_deviations
from matrix.eval.alpaca_lc_table import bundled_difficulty, bundled_table
from matrix.eval.benchmarks.alpaca_eval2 import MIN_ROWS_FOR_LC, AlpacaEval2

# The goal for a model the difficulty fit never saw (leave-one-model-out over every shipped
# annotation set): mean |LC - published LC| <= 0.3 points, and <= 0.5 for every model whose
# average answer length is within a factor of two of the baseline's.
GOAL_MEAN_ABS = 0.3
GOAL_IN_RANGE_ABS = 0.5
# A table the script fits and the shipped one must be interchangeable for every conclusion drawn
# against that goal: the LC they give may differ by at most a tenth of the goal's mean budget.
TABLE_AGREEMENT = GOAL_MEAN_ABS / 10  # points


@pytest.fixture(scope="module")
def loo():
    devs = leave_one_out_deviations()
    assert len(devs) == 44  # every shipped set with a published LC, the baseline excluded
    return devs


def test_leave_one_model_out_mean_deviation_meets_the_goal(loo):
    assert np.mean([abs(d.deviation) for d in loo]) <= GOAL_MEAN_ABS


@pytest.mark.xfail(
    strict=True,
    reason="goal not met yet for 4 of 22 in-range models (max +0.96, "
    "gpt-3.5-turbo-1106_verbose); docs/evaluate.md lists every set and explains the misses",
)
def test_leave_one_model_out_each_in_range_model_meets_the_goal(loo):
    for d in loo:
        if d.in_range:
            assert abs(d.deviation) <= GOAL_IN_RANGE_ABS, d


def test_shipped_table_is_what_the_script_fits():
    # The difficulty fit has flat directions (instructions that few models tell apart): L-BFGS-B
    # stops at points whose difficulties differ by ~1e-3 between CPUs and BLAS kernels (AVX2 vs
    # AVX-512 OpenBLAS kernels: 7e-4 on two instructions). So the tables are compared by the
    # LC they give, the quantity the goal is about, not value by value.
    table, _ = fit_length_control_table()
    shipped = bundled_table()
    assert len(shipped.difficulty) == len(table.difficulty) == 805

    # LC of the 198 leaderboard models from their published coefficients: a smooth function of
    # the difficulty distribution, so every model must agree to TABLE_AGREEMENT, and the refit
    # table must meet the goal against the published LC as the shipped one does (next test).
    weights = published_glm_weights()
    board = [m for m in weights if m != BASELINE and published_lc(m) is not None]
    published = np.array([published_lc(m) for m in board])
    refit_lc = np.array([weights[m].lc(table.difficulty) for m in board])
    shipped_lc = np.array([weights[m].lc(shipped.difficulty) for m in board])
    assert len(board) > 150
    assert np.abs(refit_lc - shipped_lc).max() <= TABLE_AGREEMENT
    assert np.mean(np.abs(refit_lc - published)) <= GOAL_MEAN_ABS

    # LC as a run computes it: each annotation set's own GLM, fitted with the table's gamed rows.
    # This also sees what the published-coefficient LC cannot: which instruction each difficulty
    # belongs to, and the gamed rows. The GLM picks C on a grid by CV losses that differ by 1e-6
    # (relative) between the best two C, so a vanishing change of the table or of the BLAS can
    # move a model to the other one (0.08 points seen between BLAS kernels; the best two C of
    # these 44 models give LCs at most 0.14 apart). The goal bounds the mean, where one such move
    # counts 1/44: the mean must agree to TABLE_AGREEMENT, no model may move by half its
    # per-model goal, and both tables must meet the mean goal against the published LC.
    sets = load_annotation_sets()
    models = evaluable_models(sets)
    published = np.array([published_lc(m) for m in models])

    def glm_lc(t):
        return np.array(
            [
                fit_length_controlled(
                    sets[m], t.difficulty, gamed=t.gamed
                ).length_controlled_win_rate
                for m in models
            ]
        )

    refit_lc, shipped_lc = glm_lc(table), glm_lc(shipped)
    assert len(models) == 44
    assert np.mean(np.abs(refit_lc - shipped_lc)) <= TABLE_AGREEMENT
    assert np.abs(refit_lc - shipped_lc).max() <= GOAL_IN_RANGE_ABS / 2
    assert np.mean(np.abs(refit_lc - published)) <= GOAL_MEAN_ABS
    assert np.mean(np.abs(shipped_lc - published)) <= GOAL_MEAN_ABS


def test_table_reproduces_published_lc_from_published_coefficients():
    # upstream's LC is mean_x sigmoid(theta + psi * d_x) with its own table: with the published
    # coefficients, ours must give the published LC of the leaderboard models to the goal
    d = bundled_difficulty()
    devs = [
        c.lc(d) - lc
        for m, c in published_glm_weights().items()
        if m != BASELINE and (lc := published_lc(m)) is not None
    ]
    assert len(devs) > 150
    assert np.mean(np.abs(devs)) <= GOAL_MEAN_ABS


def _as_evaluate_rows(model: str, items: list[dict]) -> tuple[list[dict], list[dict]]:
    """The published annotations of a bundled model as evaluate's answers and judgments: its
    outputs as the answers, upstream's weighted_alpaca_eval_gpt4_turbo preferences as the
    judgments (the soft preferences evaluate asks its judge for by default)."""
    rows = load_bundled_annotations(model)
    assert [r["instruction"] for r in rows] == [it["instruction"] for it in items]
    pairs = list(zip(items, rows, strict=True))
    answers = [{"id": it["id"], "turns": [r["output_2"]]} for it, r in pairs]
    judgments = [{"id": it["id"], "preference": r["preference"], "ok": True} for it, r in pairs]
    return answers, judgments


def test_evaluates_lc_meets_the_goal_on_published_annotations():
    """LC as `python evaluate.py eval=alpaca_eval2` computes it: `AlpacaEval2.score()` on the
    805 items it loads, for each model whose 805 published annotations are bundled."""
    bench = AlpacaEval2({})
    items = bench.load()
    base_len = float(leaderboard()[BASELINE]["avg_length"])
    devs = []
    for model in BUNDLED_MODELS:
        s = bench.score(items, *_as_evaluate_rows(model, items))
        board = leaderboard()[model]
        assert s["n"] == 805 and s["win_rate"] == pytest.approx(float(board["win_rate"]), abs=1e-9)
        dev = s["length_controlled_win_rate"] - published_lc(model)
        if base_len / 2 <= s["avg_length"] <= 2 * base_len:  # in range: the per-model goal
            assert abs(dev) <= GOAL_IN_RANGE_ABS, (model, dev)
        devs.append(dev)
    assert len(devs) == 4 and np.mean(np.abs(devs)) <= GOAL_MEAN_ABS


def test_evaluate_reports_lc_from_min_rows_on():
    bench = AlpacaEval2({})
    items = bench.load()
    answers, judgments = _as_evaluate_rows("FuseChat-Llama-3.1-8B-Instruct", items)
    n = MIN_ROWS_FOR_LC
    assert "length_controlled_win_rate" not in bench.score(items[: n - 1], answers, judgments)
    assert "length_controlled_win_rate" in bench.score(items[:n], answers, judgments)


def _simulate(theta, phi, n=805, seed=0):
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(size=n)
    len_base = rng.integers(500, 3000, n)
    len_model = rng.integers(200, 4000, n)
    delta = (len_base - len_model).astype(float)
    z = theta + phi * np.tanh(delta / delta.std(ddof=1)) + difficulty
    pref = 1.0 / (1.0 + np.exp(-z))
    true_lc = (1.0 / (1.0 + np.exp(-(theta + difficulty)))).mean() * 100
    return Pairwise(pref, len_model, len_base), difficulty, true_lc


def test_length_term_is_removed():
    # a model whose wins are partly explained by writing longer answers
    pairs, difficulty, true_lc = _simulate(theta=-0.5, phi=-2.0)
    raw = pairs.preference.mean() * 100
    fit = fit_length_controlled(pairs, difficulty, n_splits=2)
    assert fit.coefficients["length"] == pytest.approx(-2.0, abs=0.1)
    # the labels are the model's exact win probabilities: its LC must meet the per-model goal
    assert fit.length_controlled_win_rate == pytest.approx(true_lc, abs=GOAL_IN_RANGE_ABS)
    assert abs(raw - true_lc) > 2.0  # the test would fail if the length term were kept


def test_gamed_rows_enter_without_model_term():
    pairs, difficulty, _ = _simulate(theta=0.3, phi=-1.0, n=300)
    rng = np.random.default_rng(1)
    g_delta = rng.normal(size=300)
    g_pref = 1.0 / (1.0 + np.exp(-(-1.0 * np.tanh(g_delta) + difficulty)))
    fit = fit_length_controlled(
        pairs, difficulty, gamed=[GamedRows(g_pref, g_delta, difficulty)], n_splits=2
    )
    assert fit.coefficients["length"] == pytest.approx(-1.0, abs=0.15)


def test_gamed_pseudo_rows_have_the_requested_label_sums():
    d = bundled_difficulty()
    sums = np.array([-150.0, 400.0])
    rows = gamed_rows(d, sums)
    got = np.array(
        [
            sum((g.preference * np.tanh(g.std_delta_len)).sum() for g in rows),
            sum((g.preference * g.difficulty).sum() for g in rows),
        ]
    )
    np.testing.assert_allclose(got, sums, rtol=1e-9)
