"""Retrieval, parsing, filters and statistics on their own."""

import numpy as np
import pytest

from matrix.gen.candidates import Candidate
from matrix.gen.filters import Deduper, RowChecks, Rules, filter_batch, normalize
from matrix.gen.inputs import Seed
from matrix.gen.retrieval import mmr
from matrix.gen.stats import distinct_n, embedding_spread
from matrix.gen.synthesis import parse_instruction, template_labels
from matrix.llm.embeddings import Encoder


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_mmr_trades_relevance_for_diversity():
    q = _unit([1.0, 0.0, 0.0])
    docs = _unit([[1.0, 0.1, 0.0], [1.0, 0.12, 0.0], [0.6, 0.0, 0.8], [0.0, 0.0, 1.0]])
    assert mmr(q, docs, 2, lam=1.0) == [0, 1]  # plain top-k: two near-copies
    assert mmr(q, docs, 2, lam=0.5) == [0, 2]  # MMR: the second pick is a different story
    assert mmr(q, docs, 10, lam=0.7)[:1] == [0] and len(mmr(q, docs, 10, lam=0.7)) == 4


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ('Sure! Here is the request: "How do I fix my bike?"', "How do I fix my bike?"),
        ("Question: What is a prime number?", "What is a prime number?"),
        ("Riley Chen: Can you help me plan a trip?", "Can you help me plan a trip?"),
        ("How do I bake bread?", "How do I bake bread?"),
        ('""', None),
        ("Here is the question:", None),
        ("Can you plan my trip?\n\nYour goal: Riley wants to travel.", "Can you plan my trip?"),
        ("Situation: a trip.\nWhat happened: nothing", None),
    ],
)
def test_parse_instruction(raw, want):
    tpl = {"user": "Situation: {scenario}\n\nWhat happened:\n{actions}\nYour goal: {goal}"}
    labels = template_labels(tpl)
    assert labels == ("Situation:", "What happened:", "Your goal:")
    assert parse_instruction(raw, speaker="Riley Chen", echo_labels=labels) == want


@pytest.fixture(scope="module")
def encoder():
    return Encoder()


def _cand(
    i, user, answer="A helpful and complete answer to the question.", kind="sft", rejected=None
):
    c = Candidate(
        f"x-{i}",
        Seed(f"k{i}"),
        kind,
        [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
    )
    c.rejected = rejected
    return c


RULES = Rules(
    12, 2000, 2, 8000, True, "en", ("i'?m sorry,? but", "as an ai(?: language model)?,? i")
)


def test_near_dup_filter_drops_paraphrases_keeps_distinct(encoder):
    texts = [
        "How do I bake sourdough bread at home?",
        "How can I bake sourdough bread at home?",  # paraphrase
        "What is the capital city of Australia?",
        "how do I bake sourdough bread at home",  # exact after normalisation
        "Write a Python function that reverses a linked list.",
        "Write a Python function to reverse a linked list.",  # paraphrase
    ]
    cands = [_cand(i, t) for i, t in enumerate(texts)]
    kept, dropped, surplus = filter_batch(
        cands, encoder.encode(texts), RowChecks(RULES), Deduper(0.9), False, 10
    )
    assert [c.instruction for c in kept] == [texts[0], texts[2], texts[4]]
    assert sorted(why for _, why in dropped) == ["exact_dup", "near_dup", "near_dup"]
    assert surplus == 0


def test_row_checks_each_reason(encoder):
    checks = RowChecks(RULES)
    ok = _cand(
        0,
        "How do I keep basil alive on a windowsill?",
        "Water it when the soil is dry and give it six hours of sun.",
    )
    assert checks.reason(ok, False) is None
    refusal = _cand(
        1, "How do I keep basil alive on a windowsill?", "I'm sorry, but I cannot help with that."
    )
    assert checks.reason(refusal, False) == "refusal"
    assert checks.reason(refusal, allow_refusals=True) is None
    assert checks.reason(_cand(2, "short?"), False) == "too_short"
    assert (
        checks.reason(
            _cand(
                3,
                "Comment puis-je garder le basilic en vie sur le rebord de la fenêtre ?",
                "Arrosez-le quand la terre est sèche et donnez-lui six heures de soleil.",
            ),
            False,
        )
        == "language"
    )
    same = _cand(
        4,
        "How do I keep basil alive on a windowsill?",
        "Water it often.",
        "dpo",
        rejected="water it often",
    )
    assert checks.reason(same, False) == "chosen_eq_rejected"
    cut = _cand(5, "How do I keep basil alive on a windowsill?")
    cut.truncated = True
    assert checks.reason(cut, False) == "truncated"
    emoji = _cand(7, "How do I keep basil alive on a windowsill?", "🌿🌞💧 🌿🌞💧")
    assert checks.reason(emoji, False) == "empty"
    mixed = _cand(
        8,
        "How do I keep basil alive on a windowsill and what soil should I use?",
        "Arrosez-le quand la terre est sèche et donnez-lui six heures de soleil.",
    )
    assert checks.reason(mixed, False) == "language"
    parrot = _cand(
        9,
        "How do I keep basil alive on a windowsill?",
        "How do I keep basil alive on a windowsill? That is a question.",
    )
    assert checks.reason(parrot, False) == "echo"
    bad = _cand(6, "How do I keep basil alive on a windowsill?")
    bad.problem = "unparseable"
    assert checks.reason(bad, False) == "unparseable"


def test_filter_batch_stops_at_need_and_counts_surplus(encoder):
    texts = [
        "How do I tune a guitar by ear?",
        "What causes thunder during storms?",
        "How much water should a cat drink each day?",
    ]
    kept, _, surplus = filter_batch(
        [_cand(i, t) for i, t in enumerate(texts)],
        encoder.encode(texts),
        RowChecks(RULES),
        Deduper(0.92),
        False,
        need=2,
    )
    assert len(kept) == 2 and surplus == 1


def test_diversity_statistics():
    assert distinct_n(["a b c", "a b c"], 1) == 0.5
    assert distinct_n(["a b c", "d e f"], 2) == 1.0
    same = np.tile(_unit([1.0, 0.0]), (4, 1))
    assert embedding_spread(same) == pytest.approx(0.0, abs=1e-6)
    assert embedding_spread(_unit([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(1.0)
    assert normalize("  How   are you? ") == "how are you"


def test_near_dup_index_grows_past_its_capacity_and_decides_as_brute_force():
    """The growing index (capacity doubled when full) decides exactly as comparing against a
    fresh stack of every accepted vector does, through several doublings."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 16)).astype(np.float32)
    # every third row is a slightly perturbed copy of an earlier one: a near duplicate
    rows = [base[i] if i % 3 or i < 3 else base[i // 3] + 0.05 * base[i] for i in range(len(base))]
    rows = [r / np.linalg.norm(r) for r in rows]
    dedup, kept = Deduper(0.95), []
    for i, v in enumerate(rows):
        want = "near_dup" if kept and float((np.stack(kept) @ v).max()) >= 0.95 else None
        got = dedup.admit(f"row {i}", v)
        assert got == want, i
        if got is None:
            kept.append(v)
    assert dedup.size == len(kept) > 128  # past two doublings of the first 64 rows
    assert 50 < len(rows) - len(kept) < 150
    np.testing.assert_array_equal(dedup.vectors, np.stack(kept))
    with pytest.raises(ValueError, match="8-d"):
        dedup.add("other", np.ones(8, dtype=np.float32))


def test_language_check_is_deterministic_and_names_a_bad_code():
    from matrix.gen.filters import LanguageCheck

    check = LanguageCheck("en")
    french = "Arrosez-le quand la terre est sèche et donnez-lui six heures de soleil."
    english = "Water it when the soil is dry and give it six hours of sun every day."
    assert [check.ok(french) for _ in range(5)] == [False] * 5
    assert [check.ok(english) for _ in range(5)] == [True] * 5
    assert LanguageCheck("fr").ok(french) and LanguageCheck(None).ok(french)
    with pytest.raises(ValueError, match="generate.filters.language='xx'"):
        LanguageCheck("xx")
