"""Magpie-style sampling (generator=magpie) with a served model: the generator's raw
completions go to the OpenAI backend's /v1/completions and the responder's chats to
/v1/chat/completions, over real HTTP to an in-process OpenAI-compatible server
(tests/llm/openai_http.py). The same stage on a local model is in test_hf_paths.py."""

from matrix.gen.run import run_generate
from tests.doubles import compose_generate, read_rows
from tests.llm.openai_http import TOPICS, OpenAIHTTPServer


def test_magpie_rows_from_a_served_model(tmp_path):
    with OpenAIHTTPServer("smollm2") as server:
        cfg = compose_generate(
            tmp_path,
            "generator=magpie",
            "generator.sets.magpie.target=3",
            f"generate.simulation_dir={tmp_path / 'no_simulation'}",
            "llm=smollm2_server",
            f"llm.backends.server.base_url={server.base_url}",
            "generate.filters.language=null",
        )
        result = run_generate(cfg)
    raw = [body for path, body in server.posts if path == "/v1/completions"]
    assert raw and all(b["prompt"].endswith("<|im_start|>user\n") for b in raw)
    rows = read_rows(tmp_path / "runs" / "default" / "generate" / "sft.jsonl")
    assert len(rows) == 3 and result["counts"]["sft"] == 3
    assert result["llm"]["roles"]["generator"]["calls"] == len(raw)
    users = []
    for r in rows:
        user, assistant = (m["content"] for m in r["messages"])
        assert user in TOPICS and assistant == "chat: " + user  # (the label prefix is cleaned)
        assert r["lineage"]["source"] == "magpie"
        users.append(user)
    assert len(set(users)) == 3  # seed + k per copy of the one prompt: three different rows
