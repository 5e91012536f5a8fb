import pytest
from omegaconf import OmegaConf

from matrix.common.io import read_json
from matrix.llm.cache import CallCache
from matrix.llm.errors import BudgetExhausted, ContextOverflow
from matrix.llm.ledger import Budget
from matrix.llm.roles import Roles
from tests.doubles import ScriptedBackend, StreamingScriptedBackend, chats_of


def make_roles(tmp_path, backend, cache=True, budget=None, prices=None, **role):
    cfg = OmegaConf.create(
        {
            "backends": {
                "b": {"_target_": "builtins.dict", **({"prices": prices} if prices else {})}
            },
            "roles": {"judge": {"backend": "b", "max_new_tokens": 8, **role}},
            "cache": {"enabled": cache, "dir": str(tmp_path)},
            "budget": budget or {},
        }
    )
    return Roles(cfg, backends={"b": backend})


def test_second_identical_run_makes_zero_backend_calls(tmp_path):
    backend = ScriptedBackend()
    chats = chats_of("a", "b", "c")
    first = make_roles(tmp_path, backend).get("judge").generate(chats)
    assert backend.rows_sent == 3
    roles = make_roles(tmp_path, backend)  # a new run, same cache dir
    second = roles.get("judge").generate(chats)
    assert second == first
    assert backend.rows_sent == 3  # nothing new reached the backend
    led = roles.ledger()["roles"]["judge"]
    assert (led["requests"], led["calls"], led["cache_hits"], led["tokens"]) == (3, 0, 3, 0)


def test_only_misses_go_to_the_backend_as_one_batch(tmp_path):
    backend = ScriptedBackend()
    roles = make_roles(tmp_path, backend)
    judge = roles.get("judge")
    judge.generate(chats_of("a", "c"))
    out = judge.generate(chats_of("a", "b", "c", "d"))
    assert [c.text for c in out] == ["echo: a", "echo: b", "echo: c", "echo: d"]
    assert backend.batches[-1] == chats_of("b", "d")


def test_overrides_are_part_of_the_key(tmp_path):
    backend = ScriptedBackend(lambda chat, s: f"{s.max_new_tokens}")
    judge = make_roles(tmp_path, backend).get("judge")
    assert judge.generate(chats_of("a"))[0].text == "8"
    assert judge.generate(chats_of("a"), max_new_tokens=4)[0].text == "4"
    assert backend.rows_sent == 2


def test_greedy_duplicates_are_sent_once_sampled_ones_each(tmp_path):
    backend = ScriptedBackend(lambda chat, s: f"seed{s.seed}")
    judge = make_roles(tmp_path, backend).get("judge")
    out = judge.generate(chats_of("q", "q", "q"))
    assert backend.rows_sent == 1 and len(out) == 3
    judge.generate(chats_of("q", "q"), temperature=0.9)
    assert backend.rows_sent == 3


def test_cache_off_passes_everything_through(tmp_path):
    backend = ScriptedBackend()
    roles = make_roles(tmp_path, backend, cache=False)
    roles.get("judge").generate(chats_of("a", "a"))
    roles.get("judge").generate(chats_of("a", "a"))
    assert backend.rows_sent == 4 and roles.cache is None


def test_ledger_counts_tokens_and_cost_per_role(tmp_path):
    backend = ScriptedBackend(lambda chat, s: "x" * 40)  # 11 completion tokens
    roles = make_roles(tmp_path, backend, prices={"prompt": 1.0, "completion": 10.0})
    roles.get("judge").generate(chats_of("y" * 40, "z" * 40))  # 11 prompt tokens each
    led = roles.ledger()
    j = led["roles"]["judge"]
    assert (j["prompt_tokens"], j["completion_tokens"], j["calls"]) == (22, 22, 2)
    assert j["cost"] == pytest.approx((22 * 1.0 + 22 * 10.0) / 1e6)
    assert led["total"]["cost"] == j["cost"]


def test_budget_stops_before_the_call_that_would_exceed_it_and_resumes(tmp_path):
    backend = ScriptedBackend()
    chats = chats_of(*[f"question {i}" for i in range(5)])
    # A row is estimated at 3 + 8 (template) + 8 (max_new_tokens) = 19 tokens and costs 8
    # once answered: rows go out while spent + 19 <= 40, i.e. three rows (0, 8, 16 spent).
    roles = make_roles(tmp_path, backend, budget={"max_tokens": 40})
    with pytest.raises(BudgetExhausted) as e:
        roles.get("judge").generate(chats)
    assert backend.rows_sent == 3
    assert e.value.limit["max_tokens"] == 40 and "llm.budget.max_tokens" in str(e.value)
    assert roles.ledger()["total"]["tokens"] <= 40
    # Resume with a larger budget: the three paid rows come from the cache.
    roles = make_roles(tmp_path, backend, budget={"max_tokens": 1000})
    out = roles.get("judge").generate(chats)
    assert [c.text for c in out] == [f"echo: question {i}" for i in range(5)]
    assert backend.rows_sent == 5
    assert roles.ledger()["total"]["cache_hits"] == 3


def test_budget_spans_resumes_of_the_same_run(tmp_path):
    """A killed or budget-stopped run that restarts keeps counting what it already spent; the
    cap is per run, not per attempt. Another config (key) starts from zero."""
    spend = tmp_path / "run" / "llm_spend.json"
    spend.parent.mkdir()
    backend = ScriptedBackend()
    first = make_roles(tmp_path, backend, cache=False, budget={"max_tokens": 40})
    first.carry_spend(spend, "cfg-a")
    first.get("judge").generate(chats_of("question 0", "question 1"))  # 2 x 8 tokens
    assert read_json(spend)["total"]["tokens"] == 16

    again = make_roles(tmp_path, backend, cache=False, budget={"max_tokens": 40})
    again.carry_spend(spend, "cfg-a")
    assert again.ledger()["total"]["tokens"] == 16
    assert again.ledger()["roles"]["judge"]["calls"] == 2  # per-role spend carried too
    with pytest.raises(BudgetExhausted, match="24 spent"):
        # alone each attempt would fit 40 tokens; together only one more row does
        again.get("judge").generate(chats_of("question 2", "question 3", "question 4"))
    assert backend.rows_sent == 3
    assert read_json(spend)["total"]["tokens"] == 24

    other = make_roles(tmp_path, backend, cache=False, budget={"max_tokens": 40})
    other.carry_spend(spend, "cfg-b")
    assert other.ledger()["total"]["tokens"] == 0


def test_stage_spend_key_leaves_the_budget_out(tmp_path):
    """Raising llm.budget and rerunning resumes the same run: its spend so far still counts."""
    from matrix.core.stage import StageRun

    def key_of(max_tokens):
        cfg = OmegaConf.create({"seed": 1, "llm": {"budget": {"max_tokens": max_tokens}}})
        run = StageRun(stage="evaluate", dir=tmp_path, cfg=cfg, config_hash="x")
        roles = make_roles(tmp_path, ScriptedBackend(), cache=False)
        run.track_llm_spend(roles)
        return roles._spend_key

    assert key_of(10) == key_of(1000)


def test_cost_budget(tmp_path):
    backend = ScriptedBackend()
    roles = Roles(
        OmegaConf.create(
            {
                "backends": {"b": {"prices": {"prompt": 1e6, "completion": 0}}},
                "roles": {"judge": {"backend": "b", "max_new_tokens": 8}},
            }
        ),
        backends={"b": backend},
        budget=Budget(max_cost=5.0),
    )
    with pytest.raises(BudgetExhausted, match="max_cost"):
        roles.get("judge").generate(chats_of("hello"))  # ~10 tokens at $1/token
    assert backend.rows_sent == 0


def test_streamed_rows_are_cached_before_a_mid_batch_failure(tmp_path):
    chats = chats_of("a", "b", "c", "d")
    dying = StreamingScriptedBackend(fail_at=2)
    with pytest.raises(ConnectionError):
        make_roles(tmp_path, dying).get("judge").generate(chats)
    healthy = ScriptedBackend()
    out = make_roles(tmp_path, healthy).get("judge").generate(chats)
    assert [c.text for c in out] == ["echo: a", "echo: b", "echo: c", "echo: d"]
    assert healthy.batches == [chats_of("c", "d")]  # a and b were paid once, kept


def test_context_overflow_names_the_callers_row(tmp_path):
    backend = ScriptedBackend(max_prompt_chars=10)
    judge = make_roles(tmp_path, backend).get("judge")
    judge.generate(chats_of("short"))
    with pytest.raises(ContextOverflow, match="row 2:") as e:
        judge.generate(chats_of("short", "ok", "x" * 50))  # row 2 is the 2nd miss sent
    assert e.value.row == 2


def test_unknown_sampling_override_is_refused(tmp_path):
    judge = make_roles(tmp_path, ScriptedBackend()).get("judge")
    with pytest.raises(TypeError, match="unknown sampling fields"):
        judge.generate(chats_of("a"), temprature=0.5)


def test_explicit_cache_object_and_bare_config_default_off(tmp_path):
    cfg = OmegaConf.create({"backends": {}, "roles": {"r": {"backend": "b"}}})
    assert Roles(cfg, backends={"b": ScriptedBackend()}).cache is None
    cache = CallCache.in_dir(tmp_path)
    assert Roles(cfg, backends={"b": ScriptedBackend()}, cache=cache).cache is cache


def test_errors_survive_pickling_across_processes():
    import pickle

    e = pickle.loads(pickle.dumps(ContextOverflow("row 3: long", row=3)))
    assert e.row == 3 and e.at_row(7).row == 7 and "row 7:" in str(e.at_row(7))
    b = pickle.loads(pickle.dumps(BudgetExhausted("over", {"tokens": 5}, {"max_tokens": 4})))
    assert b.spent == {"tokens": 5} and b.limit == {"max_tokens": 4}


# -- each wrapper alone, over a scripted backend (matrix/llm/wrappers/)


class _ShortBackend(ScriptedBackend):
    def generate(self, chats, sampling, on_result=None):
        return super().generate(chats, sampling, on_result)[:-1]


def test_streamed_wrapper_reports_each_row_once_and_checks_the_count():
    from matrix.llm.protocol import Sampling
    from matrix.llm.wrappers.serialized import SerializedLLM
    from matrix.llm.wrappers.streamed import StreamedLLM

    for backend in (ScriptedBackend(), StreamingScriptedBackend()):
        heard: list[tuple[int, str]] = []

        def listen(j, c, heard=heard):
            heard.append((j, c.text))

        out = StreamedLLM(SerializedLLM(backend)).generate_streaming(
            chats_of("a", "b"), Sampling(), listen
        )
        assert heard == [(0, "echo: a"), (1, "echo: b")]
        assert [c.text for c in out] == ["echo: a", "echo: b"]
    with pytest.raises(RuntimeError, match="returned 1 completions for 2 chats"):
        StreamedLLM(SerializedLLM(_ShortBackend())).generate(chats_of("a", "b"), Sampling())


def test_cached_wrapper_alone_sends_each_distinct_miss_once(tmp_path):
    from matrix.llm.protocol import Sampling
    from matrix.llm.wrappers.cached import CachedLLM
    from matrix.llm.wrappers.serialized import SerializedLLM
    from matrix.llm.wrappers.streamed import StreamedLLM

    backend, hits = ScriptedBackend(), []
    llm = CachedLLM(StreamedLLM(SerializedLLM(backend)), CallCache.in_dir(tmp_path), hits.append)
    llm.generate(chats_of("a"), Sampling())
    out = llm.generate(chats_of("b", "a", "b"), Sampling())
    assert [c.text for c in out] == ["echo: b", "echo: a", "echo: b"]
    assert backend.batches == [chats_of("a"), chats_of("b")]
    assert hits == [0, 2]  # the cached "a" and the second "b"


def test_budgeted_wrapper_alone_sends_the_rows_that_fit_then_stops():
    from matrix.llm.ledger import Budget, Prices, Usage
    from matrix.llm.protocol import Sampling
    from matrix.llm.wrappers.budgeted import BudgetedLLM
    from matrix.llm.wrappers.serialized import SerializedLLM
    from matrix.llm.wrappers.streamed import StreamedLLM

    backend = ScriptedBackend()
    # a 1-char row is estimated at 1 + 8 (template) prompt + 8 completion tokens = 17; the
    # 100-char row at 25 + 8 + 8 = 41, past the cap even alone
    llm = BudgetedLLM(
        StreamedLLM(SerializedLLM(backend)), Budget(max_tokens=40), Usage(), Prices(), "judge"
    )
    with pytest.raises(BudgetExhausted, match="role 'judge'"):
        llm.generate(chats_of("a", "b", "x" * 100), Sampling(max_new_tokens=8))
    assert backend.batches == [chats_of("a", "b")]
