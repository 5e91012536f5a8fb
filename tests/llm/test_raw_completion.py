"""Raw text completion (Magpie-style sampling) goes through the role's stack like a chat:
cached, budgeted, counted in the ledger and the spend file; the OpenAI backend serves it from
`/v1/completions`, here over real HTTP to an in-process OpenAI-compatible server
(tests/llm/openai_http.py; the vLLM case is in test_openai_server.py, marked `server`)."""

import pytest
from omegaconf import OmegaConf

from matrix.common.io import read_json
from matrix.llm.errors import BudgetExhausted
from matrix.llm.openai_backend import OpenAIBackend
from matrix.llm.protocol import Sampling
from matrix.llm.roles import Roles
from tests.doubles import chats_of
from tests.llm.openai_http import OpenAIHTTPServer

SMOLLM2 = "embedded:smollm2-135m-instruct"
PREFIX = (  # SmolLM2's chat template up to the user's words, with its default system turn
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\n"
)


@pytest.fixture
def server():
    with OpenAIHTTPServer("m") as s:
        yield s


def served_roles(server, tmp_path, budget=None) -> Roles:
    cfg = OmegaConf.create(
        {
            "backends": {"srv": {"_target_": "x", "prices": {"prompt": 1.0, "completion": 2.0}}},
            "roles": {
                "generator": {"backend": "srv", "max_new_tokens": 16, "temperature": 0.8},
            },
            "cache": {"enabled": True, "dir": str(tmp_path / "cache")},
            "budget": budget or {},
        }
    )
    backend = OpenAIBackend("m", base_url=server.base_url, api_key_env=None, tokenizer=SMOLLM2)
    return Roles(cfg, backends={"srv": backend})


def completions_sent(server) -> list[dict]:
    return [body for path, body in server.posts if path == "/v1/completions"]


def test_raw_completion_is_served_then_cached_and_counted(server, tmp_path):
    roles = served_roles(server, tmp_path)
    roles.carry_spend(tmp_path / "llm_spend.json", "k")
    first = roles.get("generator").complete([PREFIX] * 3, seed=7)
    sent = completions_sent(server)
    assert [b["prompt"] for b in sent] == [PREFIX] * 3
    # the k-th copy of one prompt is sampled with seed + k, so Magpie's rows differ
    assert sorted(b["seed"] for b in sent) == [7, 8, 9]
    assert sorted(c.text[:14] for c in first) == [
        "user request 7",
        "user request 8",
        "user request 9",
    ]
    led = roles.ledger()["roles"]["generator"]
    assert (led["requests"], led["calls"], led["cache_hits"], led["batches"]) == (3, 3, 0, 1)
    assert led["completion_tokens"] == 9 and led["cost"] > 0
    assert read_json(tmp_path / "llm_spend.json")["roles"]["generator"]["calls"] == 3

    again = served_roles(server, tmp_path)  # a new run on the same cache
    second = again.get("generator").complete([PREFIX] * 3, seed=7)
    assert second == first and len(completions_sent(server)) == 3  # nothing new was sent
    led = again.ledger()["roles"]["generator"]
    assert (led["requests"], led["calls"], led["cache_hits"], led["tokens"]) == (3, 0, 3, 0)


def test_a_raw_prompt_and_a_chat_with_the_same_text_are_cached_apart(server, tmp_path):
    gen = served_roles(server, tmp_path).get("generator")
    raw = gen.complete(["hello"], seed=1)[0]
    chat = gen.generate(chats_of("hello"), seed=1)[0]
    assert raw.text.startswith("user request 1:") and chat.text == "chat: hello"
    assert [p for p, _ in server.posts] == ["/v1/completions", "/v1/chat/completions"]


def test_raw_completion_stops_at_the_budget_before_sending(server, tmp_path):
    roles = served_roles(server, tmp_path, budget={"max_tokens": 70})
    gen = roles.get("generator")
    # a row is estimated at 29 prompt + 8 template + 16 new = 53 tokens: the first is sent;
    # it costs 32, and 32 + 53 more would pass 70, so the second is never sent
    with pytest.raises(BudgetExhausted, match="role 'generator'"):
        gen.complete([PREFIX, PREFIX + "x"], seed=0)
    assert len(completions_sent(server)) == 1
    assert roles.ledger()["roles"]["generator"]["calls"] == 1


def test_the_openai_backend_renders_the_pre_query_prefix_from_its_tokenizer(server, tmp_path):
    gen = served_roles(server, tmp_path).get("generator")
    assert gen.pre_query_prefix() == PREFIX
    no_tokenizer = OpenAIBackend("m", base_url=server.base_url, api_key_env=None)
    with pytest.raises(Exception, match=r"llm.backends.<name>.tokenizer"):
        no_tokenizer.pre_query_prefix()


def test_raw_logprobs_are_read_from_the_completions_answer(server):
    backend = OpenAIBackend("m", base_url=server.base_url, api_key_env=None)
    out = backend.complete(["hi"], Sampling(max_new_tokens=4, logprobs=2))
    assert completions_sent(server)[0]["logprobs"] == 2
    assert out[0].top_logprobs == ({"user": -0.1, "a": -2.5},)
