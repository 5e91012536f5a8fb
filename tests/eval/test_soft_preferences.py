"""AlpacaEval soft preferences: P("m") / (P("m") + P("M")) from the judge's first-token log-probs,
with the hard verdict as the fallback, through the benchmark's own judge and score steps."""

import math

import pytest
from hydra import compose, initialize_config_dir

from matrix.eval.benchmarks import BENCHMARKS
from matrix.eval.judging import alpaca_first_output_probability
from matrix.llm.protocol import Completion
from matrix.llm.roles import Roles
from matrix.llm.server import REPO


class LogprobJudge:
    """Test double: answers "m" with fixed first-token log-probs; records the sampling asked."""

    name = "scripted-logprobs"

    def __init__(self, p_m: float, with_logprobs: bool = True):
        self.p_m, self.with_logprobs, self.sampling = p_m, with_logprobs, []

    def generate(self, chats, **sampling):
        self.sampling.append(sampling)
        alts = {"m": math.log(self.p_m), "M": math.log(1 - self.p_m), "The": -9.0}
        top = (alts,) if self.with_logprobs and sampling.get("logprobs") else ()
        return [Completion("m", 1, 1, top_logprobs=top) for _ in chats]


def test_first_output_probability_matches_upstream_logprob_parser():
    # upstream: 2 - exp(lp_m - logsumexp(lp_m, lp_M)) = preference for output_2
    lp = {"m": -0.2, "M": -1.9, "Both": -5.0}
    expected = math.exp(-0.2) / (math.exp(-0.2) + math.exp(-1.9))
    assert alpaca_first_output_probability(lp) == pytest.approx(expected)
    assert alpaca_first_output_probability({"M": -0.1}) == 0.0  # absent token: probability 0
    assert alpaca_first_output_probability({" m": -0.5, "m": -0.5, "M": -5.0}) == pytest.approx(
        2 * math.exp(-0.5) / (2 * math.exp(-0.5) + math.exp(-5.0))
    )
    assert alpaca_first_output_probability({"The": -0.1}) is None


def test_soft_preferences_are_read_and_reported():
    bench = BENCHMARKS["alpaca_eval2"]({"limit": 20, "soft_preferences": True})
    items = bench.load()
    answers = [{"id": it["id"], "turns": ["an answer"]} for it in items]
    judge = LogprobJudge(p_m=0.8)
    judgments = bench.judge(judge, items, answers)
    assert judge.sampling[0]["logprobs"] == 5  # upstream's top_logprobs
    for j in judgments:
        assert j["preference_source"] == "logprobs"
        # "m" names output_1, which is the model's answer when the order was swapped
        assert j["preference"] == pytest.approx(1.8 if j["swapped"] else 1.2)
    scores = bench.score(items, answers, judgments)
    n_swapped = sum(j["swapped"] for j in judgments)
    assert scores["win_rate"] == pytest.approx(
        (0.8 * n_swapped + 0.2 * (20 - n_swapped)) / 20 * 100
    )
    assert scores["preferences"] == "soft (judge log-probs): 20"


def test_hard_verdicts_are_the_fallback_and_are_reported():
    bench = BENCHMARKS["alpaca_eval2"]({"limit": 10})
    items = bench.load()
    answers = [{"id": it["id"], "turns": ["an answer"]} for it in items]
    judgments = bench.judge(LogprobJudge(p_m=0.8, with_logprobs=False), items, answers)
    assert {j["preference_source"] for j in judgments} == {"verdict"}
    assert {j["preference"] for j in judgments} <= {1.0, 2.0}
    assert bench.score(items, answers, judgments)["preferences"] == "hard (verdict text): 10"
    # switched off: log-probs are not even asked for
    off = BENCHMARKS["alpaca_eval2"]({"limit": 10, "soft_preferences": False})
    judge = LogprobJudge(p_m=0.8)
    assert {j["preference_source"] for j in off.judge(judge, items, answers)} == {"verdict"}
    assert "logprobs" not in judge.sampling[0]


def test_embedded_hf_judge_gives_soft_preferences(tmp_path):
    """The in-process transformers backend returns first-token log-probs (embedded SmolLM2)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("base", overrides=["llm=smollm2_local", f"llm.cache.dir={tmp_path}"])
    judge = Roles(cfg.llm).get("judge")
    bench = BENCHMARKS["alpaca_eval2"]({"limit": 3, "judge_sampling": {"max_new_tokens": 1}})
    items = bench.load()
    answers = [{"id": it["id"], "turns": ["I do not know."]} for it in items]
    judgments = bench.judge(judge, items, answers)
    for j in judgments:
        lp = j["first_token_logprobs"][0]
        assert len(lp) == 5 and all(v <= 0 for v in lp.values())
        # the top-5 are the model's most likely first tokens: the greedy answer is among them
        assert j["raw"][0] in {t.strip() for t in lp} or j["raw"][0] == ""
    soft = [j for j in judgments if j["preference_source"] == "logprobs"]
    assert all(1.0 <= j["preference"] <= 2.0 for j in soft)
