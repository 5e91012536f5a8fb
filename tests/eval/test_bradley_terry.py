import numpy as np
import pytest

from matrix.eval.bradley_terry import (
    Battles,
    bradley_terry,
    markdown_counts,
    style_features,
    verdict_to_battles,
)


def _simulate(strengths, n_per_model, seed, style_coef=0.0):
    rng = np.random.default_rng(seed)
    records, style = [], []
    for name, beta in strengths.items():
        if name == "base":
            continue
        for _ in range(n_per_model):
            s = rng.normal()
            p = 1 / (1 + np.exp(-(beta + style_coef * s)))
            records.append((name, "base", float(rng.random() < p)))
            style.append([s])
    return records, np.array(style)


def test_bt_recovers_known_strengths():
    strengths = {"base": 0.0, "weak": -1.0, "strong": 1.0, "even": 0.0}
    records, _ = _simulate(strengths, 2000, seed=0)
    res = bradley_terry(Battles.from_records(records), "base", n_bootstrap=30)
    for name, beta in strengths.items():
        assert res.coefficients[name] == pytest.approx(beta, abs=0.15)
        assert res.lower[name] <= res.scores[name] <= res.upper[name]
    assert res.scores["strong"] > res.scores["even"] > res.scores["weak"]


def test_bootstrap_ci_coverage_is_sane():
    truth = 0.5
    hits = 0
    trials = 40
    for seed in range(trials):
        records, _ = _simulate({"base": 0.0, "m": truth}, 200, seed=seed)
        res = bradley_terry(Battles.from_records(records), "base", n_bootstrap=60, seed=seed)
        true_score = 100 / (1 + np.exp(-truth))
        hits += res.lower["m"] <= true_score <= res.upper["m"]
    assert 0.8 <= hits / trials <= 1.0  # nominal 95%


def test_style_control_separates_style_from_strength():
    records, style = _simulate({"base": 0.0, "m": 0.2}, 4000, seed=3, style_coef=1.5)
    # omitting a strong covariate attenuates the logistic coefficient of the model term
    plain = bradley_terry(Battles.from_records(records), "base", n_bootstrap=0)
    controlled = bradley_terry(Battles.from_records(records, style=style), "base", n_bootstrap=0)
    assert controlled.style_coefficients[0] == pytest.approx(1.5, abs=0.2)
    assert controlled.coefficients["m"] == pytest.approx(0.2, abs=0.1)
    assert (
        plain.coefficients["m"] < controlled.coefficients["m"]
    )  # attenuated without the covariate


def test_verdicts_map_to_weighted_battles():
    assert verdict_to_battles("A>>B", model_is_a=True) == [1.0, 1.0, 1.0]
    assert verdict_to_battles("A>>B", model_is_a=False) == [0.0, 0.0, 0.0]
    assert verdict_to_battles("B>A", model_is_a=True) == [0.0]
    assert verdict_to_battles("A=B", model_is_a=False) == [0.5]


def test_markdown_counts_ignore_code_blocks():
    text = "# Title\n\n- a\n- b\n1. one\n**bold**\n```\n# not a header\n- nor a list\n```"
    assert markdown_counts(text) == {"header": 1, "list": 3, "bold": 1}
    f = style_features(["word " * 50, "x"], ["word " * 10, "x x"])
    assert f.shape == (2, 4)
