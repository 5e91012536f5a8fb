"""Every stage a user runs, end to end against the real vLLM CPU server serving the embedded
SmolLM2 (`llm=smollm2_server`), at debug=tiny scale: simulate, generate, evaluate (model under
test and judge on the server) and the whole pipeline. A counting proxy in front of the server
sees every HTTP request, so each test checks that every backend call the ledger records was
one request to the server, and that a rerun into a fresh run folder is answered by the call
cache alone (zero new requests) with the same rows.

One server serves the whole session (`llm_server` in tests/conftest.py); the stages share one
call cache per module, as runs on one machine do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matrix.common.io import read_jsonl
from matrix.core.pipeline import run_pipeline
from matrix.eval.run import run_evaluate
from matrix.gen.run import run_generate
from matrix.llm.errors import ServerDied
from matrix.llm.server import LocalServer
from matrix.sim.run import run_simulate
from tests.conftest import compose, free_port
from tests.llm.fault_proxy import FaultProxy

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def proxy(llm_server):
    with FaultProxy(llm_server.base_url.removesuffix("/v1")) as p:
        yield p


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stages_on_server")


def overrides(work: Path, url: str, name: str, *extra: str) -> list[str]:
    return [
        "debug=tiny",
        "llm=smollm2_server",
        f"llm.backends.server.base_url={url}",
        f"llm.cache.dir={work / 'llm_cache'}",  # shared by every run of the module
        f"paths.runs_dir={work / 'runs'}",
        f"paths.cache_dir={work / 'cache'}",
        f"run.name={name}",
        "logger=none",
        *extra,
    ]


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def served_calls(ledger: dict) -> int:
    """Rows the roles sent to a backend; every role is on the server here."""
    return sum(int(u["calls"]) for u in ledger["roles"].values())


def assert_all_from_cache(ledger: dict) -> None:
    for role, u in ledger["roles"].items():
        assert u["calls"] == 0 and u["prompt_tokens"] == 0, role
        assert u["cache_hits"] == u["requests"], role


def texts(rows: list[dict], *keys: str) -> list[tuple]:
    return [tuple(json.dumps(r.get(k), sort_keys=True) for k in keys) for r in rows]


@pytest.fixture(scope="module")
def simulated(work, proxy) -> dict:
    """The simulate stage once through the server (shared by the generate tests)."""
    before = proxy.posts
    counts = run_simulate(compose("simulate", overrides(work, proxy.base_url, "sim")))
    out = work / "runs" / "sim" / "simulate"
    return {"counts": counts, "dir": out, "posts": proxy.posts - before}


def test_simulate_through_the_server_then_a_rerun_from_the_cache(work, proxy, simulated):
    out = simulated["dir"]
    events, scenarios = read_jsonl(out / "events.jsonl"), read_jsonl(out / "scenarios.jsonl")
    # debug=tiny: 8 agents act in each of 4 rounds; a scenario every 2 steps in 2 groups.
    assert len(events) == 8 * 4 == simulated["counts"]["events"]
    assert len({e["id"] for e in events}) == len(events)
    assert len(scenarios) == 4 and all(s["summary"].strip() for s in scenarios)
    m = manifest(out)
    assert m["complete"] and m["counts"]["scenarios"] == 4
    led = m["llm"]
    assert led["roles"]["agent"]["calls"] > 0 and led["roles"]["summarizer"]["calls"] > 0
    assert led["roles"]["modulator"]["calls"] > 0  # structured communication asks the server
    assert led["total"]["completion_tokens"] > 0
    # Every backend call was one request to the server, and nothing else was sent.
    assert simulated["posts"] == served_calls(led) > 0

    before = proxy.posts
    run_simulate(compose("simulate", overrides(work, proxy.base_url, "sim_again")))
    assert proxy.posts == before  # zero new requests
    again = work / "runs" / "sim_again" / "simulate"
    assert_all_from_cache(manifest(again)["llm"])
    assert texts(read_jsonl(again / "events.jsonl"), "id", "action", "observers") == texts(
        events, "id", "action", "observers"
    )
    assert texts(read_jsonl(again / "scenarios.jsonl"), "id", "summary") == texts(
        scenarios, "id", "summary"
    )


def test_simulate_with_the_groups_schedule_through_the_server(work, proxy, simulated):
    """The paper presets' schedule (`groups`, requests of many groups in flight at once, queued
    by (round, phase) in the backend's slots) against the real server, the call cache off so
    every request reaches it: the same rows as the lock-step run, one request per call."""
    before = proxy.posts
    extra = ("simulation.schedule=groups", "llm.cache.enabled=false")
    counts = run_simulate(
        compose("simulate", overrides(work, proxy.base_url, "sim_groups", *extra))
    )
    out = work / "runs" / "sim_groups" / "simulate"
    events, scenarios = read_jsonl(out / "events.jsonl"), read_jsonl(out / "scenarios.jsonl")
    for key in ("agents", "groups", "rounds", "events", "scenarios"):
        assert counts[key] == simulated["counts"][key], key
    lock = simulated["dir"]
    assert [e["id"] for e in events] == [e["id"] for e in read_jsonl(lock / "events.jsonl")]
    assert [s["id"] for s in scenarios] == [s["id"] for s in read_jsonl(lock / "scenarios.jsonl")]
    assert all(s["summary"].strip() for s in scenarios)
    led = manifest(out)["llm"]
    assert led["roles"]["modulator"]["calls"] > 0 and led["total"]["cache_hits"] == 0
    assert proxy.posts - before == served_calls(led) > 0


def test_generate_through_the_server_then_a_rerun_from_the_cache(work, proxy, simulated):
    extra = ("generator=tiny", f"generate.simulation_dir={simulated['dir']}")
    before = proxy.posts
    result = run_generate(compose("generate", overrides(work, proxy.base_url, "gen", *extra)))
    posts = proxy.posts - before
    out = work / "runs" / "gen" / "generate"
    sft, dpo = read_jsonl(out / "sft.jsonl"), read_jsonl(out / "dpo.jsonl")
    # generator=tiny's sets, each capped at 2 rows by debug=tiny (generate.limit), met exactly:
    # general, multi_turn and safety SFT rows; complex DPO rows.
    assert sorted(r["set"] for r in sft) == ["general"] * 2 + ["multi_turn"] * 2 + ["safety"] * 2
    assert [r["set"] for r in dpo] == ["complex"] * 2
    assert len({r["id"] for r in sft + dpo}) == 8
    for row in sft + dpo:
        models = row["lineage"]["models"]
        assert models["generator"] == models["responder"] == "smollm2"  # the served name
    for row in sft:
        assert [m["role"] for m in row["messages"]][:2] == ["user", "assistant"]
        assert all(m["content"].strip() for m in row["messages"])
    for row in dpo:
        assert (
            row["chosen"].strip() and row["rejected"].strip() and row["chosen"] != row["rejected"]
        )
    m = manifest(out)
    assert m["complete"] and m["counts"]["sft"] == 6 and m["counts"]["dpo"] == 2
    led = m["llm"]
    for role in ("generator", "responder", "rejecter"):
        assert led["roles"][role]["calls"] > 0, role
    assert posts == served_calls(led) == served_calls(result["llm"]) > 0

    before = proxy.posts
    run_generate(compose("generate", overrides(work, proxy.base_url, "gen_again", *extra)))
    assert proxy.posts == before
    again = work / "runs" / "gen_again" / "generate"
    assert_all_from_cache(manifest(again)["llm"])
    assert texts(read_jsonl(again / "sft.jsonl"), "id", "messages") == texts(sft, "id", "messages")
    assert texts(read_jsonl(again / "dpo.jsonl"), "id", "chosen", "rejected") == texts(
        dpo, "id", "chosen", "rejected"
    )


def test_evaluate_model_and_judge_through_the_server_then_a_rerun_from_the_cache(work, proxy):
    # eval=demo (AlpacaEval 2 pairwise against the reference), capped at 5 items by debug=tiny;
    # the model under test is the responder role, i.e. the served model, as is the judge.
    extra = ("eval=demo", "eval.model.role=responder", "eval.model.checkpoint=null")
    before = proxy.posts
    scores = run_evaluate(compose("evaluate", overrides(work, proxy.base_url, "ev", *extra)))
    posts = proxy.posts - before
    out = work / "runs" / "ev" / "evaluate"
    s = scores["alpaca_eval2"]
    assert s["n"] == 5
    assert 0.0 <= s["win_rate"] <= 100.0
    answers = read_jsonl(out / "alpaca_eval2" / "answers.jsonl")
    judgments = read_jsonl(out / "alpaca_eval2" / "judgments.jsonl")
    assert len(answers) == len({a["id"] for a in answers}) == 5
    assert len(judgments) == 5
    m = manifest(out)
    assert m["complete"] and m["model"] == "smollm2" and m["judge"] == "smollm2"
    led = m["llm"]["roles"]
    assert led["model"]["calls"] == 5  # one answer per item
    assert led["judge"]["calls"] >= 5  # one judgment per item (plus any repair turns)
    assert posts == led["model"]["calls"] + led["judge"]["calls"]
    assert json.loads((out / "scores.json").read_text())["scores"]["alpaca_eval2"] == s

    before = proxy.posts
    again = run_evaluate(compose("evaluate", overrides(work, proxy.base_url, "ev_again", *extra)))
    assert proxy.posts == before
    assert again == scores
    led = manifest(work / "runs" / "ev_again" / "evaluate")["llm"]["roles"]
    assert led["model"]["calls"] == 0 and led["judge"]["calls"] == 0
    assert led["model"]["cache_hits"] == 5


def test_pipeline_through_the_server_then_a_rerun_from_the_cache(work, proxy):
    # experiment=demo: simulate -> generate -> train -> evaluate the trained model, judged on
    # the server. seed=1 keeps its sampled prompts apart from the stage tests' (a cold cache).
    extra = ("experiment=demo", "seed=1")
    before = proxy.posts
    run_pipeline(compose("pipeline", overrides(work, proxy.base_url, "pipe", *extra)))
    posts = proxy.posts - before
    run = work / "runs" / "pipe"
    manifests = {s: manifest(run / s) for s in ("simulate", "generate", "train", "evaluate")}
    assert all(m["complete"] for m in manifests.values())
    assert (run / "train" / "hf_model" / "config.json").exists()
    sim_led, gen_led = manifests["simulate"]["llm"], manifests["generate"]["llm"]
    ev = manifests["evaluate"]
    assert ev["judge"] == "smollm2" and ev["model"] != "smollm2"  # the trained checkpoint
    judge_calls = ev["llm"]["roles"]["judge"]["calls"]
    assert sim_led["roles"]["agent"]["calls"] > 0 and gen_led["roles"]["generator"]["calls"] > 0
    assert judge_calls > 0
    # The model under test ran in process; everything else was one request per call.
    assert posts == served_calls(sim_led) + served_calls(gen_led) + judge_calls
    assert manifests["generate"]["counts"]["sft"] == len(read_jsonl(run / "generate/sft.jsonl"))

    before = proxy.posts
    run_pipeline(compose("pipeline", overrides(work, proxy.base_url, "pipe_again", *extra)))
    assert proxy.posts == before  # simulate, generate and the judge: all from the cache
    again = work / "runs" / "pipe_again"
    assert_all_from_cache(manifest(again / "simulate")["llm"])
    assert_all_from_cache(manifest(again / "generate")["llm"])
    assert manifest(again / "evaluate")["llm"]["roles"]["judge"]["calls"] == 0
    assert texts(read_jsonl(again / "generate/sft.jsonl"), "id", "messages") == texts(
        read_jsonl(run / "generate/sft.jsonl"), "id", "messages"
    )


def test_a_stage_whose_server_dies_says_why_and_how_to_restart_it(work, tmp_path):
    # The server as vLLM starts it by default on a CPU (chunked prefill on, here with a small
    # step budget so every agent prompt is split): the first seeded batch kills its engine.
    server = LocalServer(
        free_port(),
        log_path=tmp_path / "server.log",
        extra_args=(
            "--enable-chunked-prefill",
            "--max-num-batched-tokens",
            "256",
            "--max-num-seqs",
            "8",
        ),
    )
    with server:
        url = server.base_url
        cfg = compose(
            "simulate",
            [
                *overrides(work, url, "dies"),
                f"llm.cache.dir={tmp_path / 'llm_cache'}",  # a cold cache: every call is sent
                "llm.backends.server.max_retries=2",
                "llm.backends.server.retry_max_wait=1",
            ],
        )
        with pytest.raises(ServerDied) as e:
            run_simulate(cfg)
    msg = str(e.value)
    assert url in msg and "HTTP 500" in msg
    assert "RuntimeError: CPU Generator does not use offset" in msg  # the log's root cause
    assert "--no-enable-chunked-prefill" in msg  # the fix
    assert f"Restart it with: {server.spec.command()}" in msg
