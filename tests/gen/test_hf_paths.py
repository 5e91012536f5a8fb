"""Paths that need a real local model: Magpie's raw-prefix sampling and DPO rejected answers
from a `generate.rejected_model` folder. A 2-layer random-weight Llama with the SmolLM2 tokenizer
stands in: these tests check plumbing, not text quality."""

from pathlib import Path

import pytest

from matrix.gen.run import run_generate
from matrix.llm.hf import HFBackend
from matrix.llm.protocol import Sampling
from tests.conftest import build_tiny_llama
from tests.doubles import SCRIPTED_ROLES, compose_generate, read_rows, scripted_backends


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    # smaller than the shared tiny model: the Magpie test's expectations were taken with it
    return build_tiny_llama(
        tmp_path_factory.mktemp("tiny_llama"),
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )


def test_pre_query_prefix_is_the_template_up_to_the_user_text(tiny_model):
    backend = HFBackend(str(tiny_model), device="cpu")
    prefix = backend.pre_query_prefix()
    assert prefix.endswith("<|im_start|>user\n")
    outs = backend.complete([prefix, prefix], Sampling(max_new_tokens=6, temperature=1.0, seed=3))
    assert len(outs) == 2 and all(o.prompt_tokens > 0 and o.completion_tokens > 0 for o in outs)


def _hf_overrides(tiny_model):
    return [
        f"llm.backends.smollm2.model={tiny_model}",
        "llm.backends.smollm2.device=cpu",
        "generate.filters.language=null",
        "generate.filters.min_instruction_chars=1",
        "generate.filters.drop_truncated=false",
        "generate.filters.refusal_patterns=[]",
        "llm.roles.generator.max_new_tokens=8",
        "llm.roles.responder.max_new_tokens=8",
        "llm.roles.rejecter.max_new_tokens=8",
    ]


def test_magpie_baseline_writes_rows_from_the_chat_template_alone(tmp_path, tiny_model):
    # No simulation_dir at all: Magpie needs nothing but the model and its chat template.
    cfg = compose_generate(
        tmp_path,
        "generator=magpie",
        "generator.sets.magpie.target=3",
        f"generate.simulation_dir={tmp_path / 'no_simulation'}",
        *_hf_overrides(tiny_model),
    )
    result = run_generate(cfg)
    rows = read_rows(tmp_path / "runs" / "default" / "generate" / "sft.jsonl")
    assert len(rows) == 3 and result["counts"]["sft"] == 3
    for r in rows:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert r["messages"][0]["content"].strip()
        lin = r["lineage"]
        assert lin["source"] == "magpie" and lin["scenario_ids"] == [] and lin["agent_ids"] == []
        assert lin["models"]["generator"] == str(tiny_model)


def test_rejected_answers_come_from_the_rejected_model_folder(tmp_path, sim_dir, tiny_model):
    cfg = compose_generate(
        tmp_path,
        f"generate.simulation_dir={sim_dir}",
        "generator=dpo_complex",
        "generator.sets.complex.target=2",
        f"generate.rejected_model={tiny_model}",
        "generate.filters.language=null",
        "generate.filters.min_response_chars=1",
        "generate.filters.drop_truncated=false",
        "llm.roles.rejecter.max_new_tokens=8",
        *SCRIPTED_ROLES[:2],
    )
    run_generate(cfg, backends=scripted_backends())
    rows = read_rows(tmp_path / "runs" / "default" / "generate" / "dpo.jsonl")
    assert len(rows) == 2
    for r in rows:
        assert r["lineage"]["models"]["rejecter"] == str(tiny_model)
        assert r["chosen"].startswith("Here is a clear answer.") and r["rejected"] != r["chosen"]
