"""The generate stage end to end with scripted LLM doubles (real embeddings and filters)."""

import json

import pytest
from datasets import load_dataset, load_from_disk

from matrix.common.validation import ConfigError
from matrix.gen.run import run_generate
from tests.doubles import SCRIPTED_ROLES, compose_generate, read_rows, scripted_backends

TINY = ["generator=tiny", "generate.filters.near_dup_threshold=0.95", *SCRIPTED_ROLES]


def _out(tmp_path):
    return tmp_path / "runs" / "default" / "generate"


def test_tiny_mix_rows_formats_lineage_and_files(tmp_path, sim_dir):
    cfg = compose_generate(tmp_path, f"generate.simulation_dir={sim_dir}", *TINY)
    result = run_generate(cfg, backends=scripted_backends())
    out = _out(tmp_path)
    sft, dpo = read_rows(out / "sft.jsonl"), read_rows(out / "dpo.jsonl")
    # Targets met exactly: general 4 + multi_turn 2 + safety 2 SFT rows, complex 2 DPO rows.
    assert len(sft) == 8 and len(dpo) == 2
    assert result["counts"]["sft"] == 8 and result["counts"]["dpo"] == 2
    agents = {
        json.loads(x)["profile"]["id"]: json.loads(x)
        for x in (sim_dir / "agents.jsonl").read_text().splitlines()
    }
    scenarios = {
        json.loads(x)["id"]: json.loads(x)
        for x in (sim_dir / "scenarios.jsonl").read_text().splitlines()
    }
    for row in sft + dpo:
        lin = row["lineage"]
        assert lin["generator"] == "tiny" and lin["template"].startswith(
            f"{row['set']}/instruction@"
        )
        assert len(lin["scenario_ids"]) == 1 and lin["scenario_ids"][0] in scenarios
        (aid,) = lin["agent_ids"]
        assert agents[aid]["index"] == lin["agent_indices"][0]
        # The persona is a participant of the scenario the row is grounded in.
        assert lin["agent_indices"][0] in scenarios[lin["scenario_ids"][0]]["participants"]
        assert lin["models"]["generator"] == "scripted-generator"
        assert lin["models"]["responder"] == "scripted-responder"
    for row in dpo:
        assert row["lineage"]["models"]["rejecter"] == "scripted-rejecter"
        assert [m["role"] for m in row["prompt"]] == ["user"]
        assert (
            row["chosen"] != row["rejected"] and row["chosen"].strip() and row["rejected"].strip()
        )
    roles = {r["set"]: [m["role"] for m in r["messages"]] for r in sft}
    assert roles["multi_turn"] == ["user", "assistant", "user", "assistant"]
    assert roles["general"] == ["user", "assistant"]
    assert len({r["id"] for r in sft + dpo}) == 10
    for f in (
        "general.jsonl",
        "general_dpo.jsonl",
        "multi_turn.jsonl",
        "safety.jsonl",
        "datacard.md",
        "manifest.json",
        "stats.json",
    ):
        assert (out / f).exists(), f
    assert len(read_rows(out / "general.jsonl")) == 4
    # Loadable by the training side in both ways.
    assert load_dataset("json", data_files=str(out / "sft.jsonl"), split="train").num_rows == 8
    assert load_dataset("json", data_files=str(out / "dpo.jsonl"), split="train").num_rows == 2
    hf = load_from_disk(str(out / "hf"))
    assert hf["sft"].num_rows == 8 and hf["dpo"].num_rows == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "generate" and manifest["counts"]["sft"] == 8
    assert manifest["llm"]["roles"]["generator"]["calls"] > 0  # the key every stage uses
    assert manifest["inputs"]["scenarios"]["sha256"]
    card = (out / "datacard.md").read_text()
    assert "near_dup" in card and "chosen_eq_rejected" in card and "instruction_distinct_2" in card
    stats = json.loads((out / "stats.json").read_text())
    assert (
        0 < stats["sft"]["scenario_coverage"] <= 1
        and stats["sft"]["instruction_embedding_spread"] > 0
    )


def test_dpo_rows_never_have_chosen_equal_rejected(tmp_path, sim_dir):
    cfg = compose_generate(
        tmp_path,
        f"generate.simulation_dir={sim_dir}",
        "generator=dpo_complex",
        "generator.sets.complex.target=6",
        "generate.filters.near_dup_threshold=0.95",
        *SCRIPTED_ROLES,
    )
    run_generate(cfg, backends=scripted_backends())
    out = _out(tmp_path)
    rows = read_rows(out / "dpo.jsonl")
    assert len(rows) == 6 and all(r["chosen"] != r["rejected"] for r in rows)
    # The rejecter double echoes the chosen answer for about a third of prompts: those were
    # generated, dropped and counted.
    state = json.loads((out / "state.json").read_text())
    n_eq = state["sets"]["complex"]["filtered"].get("chosen_eq_rejected", 0)
    assert n_eq > 0
    # The data card shows that count in the complex row, under its column.
    lines = (out / "datacard.md").read_text().splitlines()
    header = next(x for x in lines if x.startswith("| set | empty"))
    row = next(
        x
        for x in lines
        if x.startswith("| complex |") and "|" in x and x.count("|") == header.count("|")
    )
    cells = dict(zip(header.split("|"), row.split("|"), strict=True))
    assert cells[" chosen_eq_rejected "].strip() == str(n_eq)
    dropped = read_rows(out / "filtered.jsonl")
    assert any(d["reason"] == "chosen_eq_rejected" for d in dropped)


def test_resume_after_kill_has_no_duplicates_and_matches_an_uninterrupted_run(tmp_path, sim_dir):
    # The call cache off: the stage's own checkpoint must give the resume, and a cache shared
    # by both runs would answer the killed run without reaching the crashing backend.
    overrides = [
        f"generate.simulation_dir={sim_dir}",
        *TINY,
        "generate.batch_size=2",
        "llm.cache.enabled=false",
    ]
    whole = tmp_path / "whole"
    run_generate(compose_generate(whole, *overrides), backends=scripted_backends())

    killed = tmp_path / "killed"
    cfg = compose_generate(killed, *overrides)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_generate(cfg, backends=scripted_backends(fail_after_calls=4))
    out = _out(killed)
    assert not (out / "sft.jsonl").exists()
    partial = sum(len(read_rows(p)) for p in (out / "sets").glob("*.jsonl"))
    assert partial > 0
    # A torn write after the last checkpoint: resume must drop it.
    with open(out / "sets" / "general.jsonl", "a") as f:
        f.write('{"id": "general-999999", "torn": tru')
    run_generate(cfg, backends=scripted_backends())
    for name in ("sft.jsonl", "dpo.jsonl"):
        resumed, ref = read_rows(out / name), read_rows(_out(whole) / name)
        assert len({r["id"] for r in resumed}) == len(resumed)
        assert resumed == ref  # same seeds, same ids, same rows as a run that never died


def test_scenarios_running_dry_raises_with_the_numbers(tmp_path, sim_dir):
    cfg = compose_generate(
        tmp_path,
        f"generate.simulation_dir={sim_dir}",
        "generator=sft_general",
        "generator.sets.general.target=3",
        "generate.max_attempts_factor=2",
        *SCRIPTED_ROLES,
    )
    # A generator that always writes the same request: everything after the first row is a
    # duplicate, so the set can never reach its target.
    with pytest.raises(ConfigError, match=r"general: 1/3 rows after 6 seeds.*exact_dup"):
        run_generate(
            cfg, backends=scripted_backends(constant="How do I fix a flat bicycle tyre quickly?")
        )


def test_persona_only_baseline_has_agents_but_no_scenarios(tmp_path, sim_dir):
    cfg = compose_generate(
        tmp_path,
        f"generate.simulation_dir={sim_dir}",
        "generator=persona_only",
        "generator.sets.persona_only.target=3",
        *SCRIPTED_ROLES,
    )
    run_generate(cfg, backends=scripted_backends())
    rows = read_rows(_out(tmp_path) / "sft.jsonl")
    assert len(rows) == 3
    assert all(
        r["lineage"]["scenario_ids"] == [] and len(r["lineage"]["agent_ids"]) == 1 for r in rows
    )
    assert all(r["lineage"]["source"] == "persona" for r in rows)


def test_retrieval_grounds_a_need_in_the_matching_scenarios(tmp_path, sim_dir):
    # The code need should find the website and the Python-at-the-clinic scenarios.
    cfg = compose_generate(
        tmp_path,
        f"generate.simulation_dir={sim_dir}",
        "generator=code",
        "generator.sets.code.target=4",
        "generator.sets.code.retrieval.top_k=2",
        "+generator.sets.code.retrieval.mmr_lambda=1.0",
        *SCRIPTED_ROLES,
    )
    run_generate(cfg, backends=scripted_backends())
    rows = read_rows(_out(tmp_path) / "code.jsonl")
    assert len(rows) == 4
    assert {s for r in rows for s in r["lineage"]["scenario_ids"]} == {"s00001-g001", "s00004-g000"}


def test_a_higher_target_extends_and_changed_prompts_start_fresh(tmp_path, sim_dir):
    base = [
        f"generate.simulation_dir={sim_dir}",
        "generator=sft_general",
        "generator.sets.general.target=2",
        *SCRIPTED_ROLES,
    ]
    run_generate(compose_generate(tmp_path, *base), backends=scripted_backends())
    # Same prompts, higher target: the finished run is resumed, only the missing row generated.
    again = compose_generate(
        tmp_path, *base[:2], "generator.sets.general.target=3", *SCRIPTED_ROLES
    )
    backends = scripted_backends()
    run_generate(again, backends=backends)
    assert len(read_rows(_out(tmp_path) / "sft.jsonl")) == 3
    assert backends["gen"].calls == 1
    assert not (tmp_path / "runs" / "default" / ".stale").exists()
    # Other prompts: the rows made with the old ones are set aside, not resumed or mixed in.
    other = compose_generate(
        tmp_path,
        *base[:2],
        "generator.sets.general.target=3",
        "generator.sets.general.prompts.response.system='Be brief.'",
        *SCRIPTED_ROLES,
    )
    backends = scripted_backends()
    run_generate(other, backends=backends)
    rows = read_rows(_out(tmp_path) / "sft.jsonl")
    (stale,) = (tmp_path / "runs" / "default" / ".stale").glob("generate__*")
    old = read_rows(stale / "sft.jsonl")
    assert len(rows) == len(old) == 3

    def response_templates(rs):
        return {r["lineage"]["templates"]["response"] for r in rs}

    assert len(response_templates(rows)) == len(response_templates(old)) == 1
    assert response_templates(rows) != response_templates(old)  # every row made anew


def test_sft_and_dpo_sets_draw_different_seeds(tmp_path, sim_dir):
    # The 20K mix: the SFT set and the DPO set draw from disjoint seed streams, each ranked
    # by its own need (`general`, `complex`): no (scenario, persona) seed grounds both.
    cfg = compose_generate(
        tmp_path,
        f"generate.simulation_dir={sim_dir}",
        "generator=matrix_20k",
        "generator.sets.general.target=3",
        "generator.sets.complex.target=3",
        "generate.filters.near_dup_threshold=0.99",
        *SCRIPTED_ROLES,
    )
    assert cfg.generator.sets.general.need != cfg.generator.sets.complex.need
    run_generate(cfg, backends=scripted_backends())
    out = _out(tmp_path)

    def seeds(rows):
        return [(r["lineage"]["scenario_ids"][0], r["lineage"]["agent_ids"][0]) for r in rows]

    sft, dpo = seeds(read_rows(out / "sft.jsonl")), seeds(read_rows(out / "dpo.jsonl"))
    assert len(sft) == len(dpo) == 3
    assert set(sft).isdisjoint(dpo)


def test_run_sets_generates_the_named_sets_only(tmp_path, sim_dir):
    base = [f"generate.simulation_dir={sim_dir}", *TINY]
    cfg = compose_generate(tmp_path, *base, "generate.run_sets=[complex]")
    result = run_generate(cfg, backends=scripted_backends())
    assert result["counts"]["sft"] == 0 and result["counts"]["dpo"] == 2
    with pytest.raises(ConfigError, match="generate.run_sets"):
        run_generate(
            compose_generate(tmp_path, *base, "generate.run_sets=[complx]"),
            backends=scripted_backends(),
        )
