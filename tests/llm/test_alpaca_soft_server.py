"""AlpacaEval soft preferences against a real vLLM OpenAI-compatible server (embedded SmolLM2):
the benchmark's judge step asks for `top_logprobs`, the server returns them, and the preference
is P("m") / (P("m") + P("M")) at the first token, as upstream's weighted judge."""

from __future__ import annotations

import math

import pytest

from matrix.eval.benchmarks import BENCHMARKS
from matrix.eval.judging import alpaca_first_output_probability
from tests.llm.test_openai_server import server_roles

pytestmark = pytest.mark.server


def test_alpaca_judge_reads_soft_preferences_from_the_server(llm_server, tmp_path):
    judge = server_roles(llm_server.base_url, tmp_path).get("judge")
    bench = BENCHMARKS["alpaca_eval2"](
        {"limit": 6, "top_logprobs": 20, "judge_sampling": {"max_new_tokens": 1}}
    )
    items = bench.load()
    answers = [{"id": it["id"], "turns": ["I am not sure."]} for it in items]
    judgments = bench.judge(judge, items, answers)
    for j in judgments:
        top = j["first_token_logprobs"][0]
        assert len(top) >= 10  # the server sent the top alternatives of the first token
        assert all(v <= 0 for v in top.values())
        assert sum(math.exp(v) for v in top.values()) <= 1.0 + 1e-3  # a part of a distribution
        p_first = alpaca_first_output_probability(top)
        if p_first is None:
            assert j["preference_source"] in ("verdict", "unparsed")
            continue
        assert j["preference_source"] == "logprobs"
        p_model = p_first if j["swapped"] else 1 - p_first
        assert j["preference"] == pytest.approx(1 + p_model)
    soft = [j for j in judgments if j["preference_source"] == "logprobs"]
    assert soft, "the judge never put 'm' or 'M' among its top-20 first tokens"
    scores = bench.score(items, answers, judgments)
    assert "soft (judge log-probs)" in scores["preferences"]
