"""What a stage's offline W&B run records for W&B's views, read back from the run files with
wandb's own record type: the sweep's group, the stage as job type, flat (dotted) config keys
with secrets redacted, and artifacts that chain scenarios -> data -> model -> scores.

The four stages are opened and finished as the real ones do (`open_stage`, outputs written
into the folder, `run.finish(counts, inputs=..., extra=...)` with the inputs each stage
records), on small real files, so the test takes seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from matrix.common.io import write_json, write_jsonl
from matrix.core.config_check import CONF_DIR
from matrix.core.stage import open_stage
from matrix.core.wandb_run import artifact_name, flat_config, summary_metrics, wandb_group
from tests.wandb_records import run_records

KEY = "sk-lineage-test-0123456789abcdef"


@pytest.fixture
def loop(tmp_path: Path, monkeypatch) -> Path:
    """runs/loop/{simulate,generate,train,evaluate}, each finished with W&B offline."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # artifact staging
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "pipeline",
            [
                f"paths.runs_dir={tmp_path / 'runs'}",
                "logger=wandb",
                "run.name=loop",
                "run.sweep_id=sweep-7",
                f"+llm.backends.unused.api_key={KEY}",
            ],
        )
    population = tmp_path / "profiles.jsonl"
    write_jsonl(population, [{"name": "Ana"}])

    sim = open_stage(cfg, "simulate")
    write_jsonl(sim.dir / "scenarios.jsonl", [{"id": "s0", "summary": "a market"}])
    write_jsonl(sim.dir / "agents.jsonl", [{"id": "a0"}])
    write_json(sim.dir / "groups.json", [[0]])
    sim.finish({"scenarios": 1}, inputs={"population": population})

    gen = open_stage(cfg, "generate")
    write_jsonl(gen.dir / "sft.jsonl", [{"id": "r0", "messages": []}])
    write_jsonl(gen.dir / "general.jsonl", [{"id": "r0", "messages": []}])
    write_jsonl(gen.dir / "filtered.jsonl", [{"id": "r1", "why": "short"}])
    gen.finish(
        {"sft": 1, "dpo": 0},
        inputs={"scenarios": sim.dir / "scenarios.jsonl", "agents": sim.dir / "agents.jsonl"},
        extra={"stats": {"sft": {"instruction_distinct_2": 0.5, "agents_used": 1}}},
    )

    train = open_stage(cfg, "train")
    hf = train.dir / "hf_model"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "llama"}')
    (hf / "model.safetensors").write_bytes(b"\0" * 4096)
    (hf / "README.md").write_text("---\nlicense: mit\n---\n# model card\n")  # evaluate edits it
    train.log({"train/loss": 2.5}, step=1)
    train.finish({"steps": 1}, inputs={"data": gen.dir / "sft.jsonl"}, extra={"hf_model": str(hf)})

    ev = open_stage(cfg, "evaluate")
    (hf / "README.md").write_text("---\nlicense: mit\n---\n# model card\n\nwin rate 50\n")
    write_json(ev.dir / "scores.json", {"scores": {"alpaca_eval2": {"win_rate": 50.0}}})
    ev.finish({"alpaca_eval2_n": 6}, inputs={"model": hf})
    return tmp_path / "runs" / "loop"


def _one(records, kind: str):
    found = [r for r in records if r.WhichOneof("record_type") == kind]
    assert found, f"no {kind} record"
    return found


def _artifacts(stage_dir: Path) -> tuple[dict, dict]:
    """(logged, used): artifact name -> record, from the stage run's artifact records."""
    logged, used = {}, {}
    for r in _one(run_records(stage_dir), "artifact"):
        (used if r.artifact.use_after_commit else logged)[r.artifact.name] = r.artifact
    return logged, used


def test_run_has_the_sweep_group_job_type_and_flat_redacted_config(loop: Path) -> None:
    for stage in ("simulate", "generate", "train", "evaluate"):
        run = _one(run_records(loop / stage), "run")[0].run
        assert run.run_group == "sweep-7"
        assert run.job_type == stage
        assert run.display_name == f"loop/{stage}"
        config = {u.key: json.loads(u.value_json) for u in run.config.update}
        assert config["run.name"] == "loop" and config["run.sweep_id"] == "sweep-7"
        assert config["logger.wandb.mode"] == "offline"
        assert config["llm.backends.unused.api_key"] == "***"
        assert "run" not in config and "llm" not in config  # no nested dicts
        assert (
            config["config_hash"]
            == json.loads((loop / stage / "manifest.json").read_text())["config_hash"]
        )
        assert KEY not in (loop / stage / "manifest.json").read_text()


def test_artifacts_chain_scenarios_data_model_scores(loop: Path) -> None:
    names = {s: artifact_name("loop", s) for s in ("simulate", "generate", "train", "evaluate")}
    expect = {  # stage -> (its output's type, the artifact it uses)
        "simulate": ("scenarios", None),
        "generate": ("data", "simulate"),
        "train": ("model", "generate"),
        "evaluate": ("scores", "train"),
    }
    digests = {}
    for stage, (kind, source) in expect.items():
        logged, used = _artifacts(loop / stage)
        assert list(logged) == [names[stage]] and logged[names[stage]].type == kind
        digests[stage] = logged[names[stage]].digest
        if source is None:
            assert not used  # the population file has no producing stage
        else:
            # the input's artifact, declared with the digest its producer logged, so
            # `wandb sync` resolves it to the producer's version
            assert list(used) == [names[source]]
            assert used[names[source]].digest == digests[source]
            assert used[names[source]].type == expect[source][0]


def test_artifact_contents_copies_and_references(loop: Path) -> None:
    def entries(stage: str) -> dict:
        art = next(iter(_artifacts(loop / stage)[0].values()))
        return {e.path: e for e in art.manifest.contents}

    assert set(entries("simulate")) == {"scenarios.jsonl", "agents.jsonl", "groups.json"}
    # the data rows, not the filtered rows or the metrics log
    assert set(entries("generate")) == {"sft.jsonl", "general.jsonl"}
    # the model is a file:// reference to the exported folder, not a copy
    model = entries("train")
    assert set(model) == {"hf_model/config.json", "hf_model/model.safetensors"}
    weights = model["hf_model/model.safetensors"]
    assert weights.ref == (loop / "train" / "hf_model" / "model.safetensors").resolve().as_uri()
    assert not weights.local_path and weights.size == 4096
    assert set(entries("evaluate")) == {"scores.json"}


def test_summary_has_counts_and_data_stats(loop: Path) -> None:
    keys = {
        u.key or "/".join(u.nested_key)
        for r in _one(run_records(loop / "generate"), "summary")
        for u in r.summary.update
    }
    assert {"counts/sft", "stats/sft/instruction_distinct_2", "stats/sft/agents_used"} <= keys


def test_no_model_artifact_without_an_export(tmp_path: Path, monkeypatch) -> None:
    from matrix.core.wandb_run import output_artifact

    folder = tmp_path / "train"
    folder.mkdir()
    manifest = {"stage": "train", "hf_model": None, "config": {"run": {"name": "x"}}}
    assert output_artifact(folder, manifest) is None
    sharded = {"stage": "evaluate", "config": {"run": {"name": "x"}, "shard": {"count": 2}}}
    write_json(folder / "scores.json", {})
    assert output_artifact(folder, sharded) is None


def test_helpers() -> None:
    assert flat_config({"a": {"b": {"c": 1}, "d": [1, {"e": 2}]}, "f": {}}) == {
        "a.b.c": 1,
        "a.d": [1, {"e": 2}],
        "f": {},
    }
    assert wandb_group({"run": {"sweep_id": "s1"}, "experiment_name": "e"}) == "s1"
    assert wandb_group({"run": {"sweep_id": None}, "experiment_name": "e"}) == "e"
    assert wandb_group({"logger": {"wandb": {"group": "g"}}, "experiment_name": "e"}) == "g"
    a = artifact_name("comm/communication=none", "train")
    b = artifact_name("comm/communication_none", "train")
    assert a != b and a.startswith("comm-communication-none-train-")
    assert artifact_name("loop", "train_sft") == "loop-train_sft"
    assert len(artifact_name("x" * 300, "train")) <= 128
    assert summary_metrics({"n": 2, "s": "x"}, {"stats": {"sft": {"d": 0.5, "ok": True}}}) == {
        "counts/n": 2,
        "stats/sft/d": 0.5,
    }


@pytest.mark.slow
def test_the_real_loop_chains_its_artifacts(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    """The four real stages (about a minute on the tiny model): each uses the artifact its
    input's stage logged, with the same digest."""
    from tests.conftest import RANDOM_MODEL_OVERRIDES, tiny_llm_overrides
    from tests.core.test_pipeline_steps import _pipeline

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    args = [
        "experiment=paper_sft_10k_tiny",
        "debug=tiny",
        "run.name=loop",
        "logger=wandb",
        "run.sweep_id=sweep-8",
        *tiny_llm_overrides(tiny_model_dir),
        *RANDOM_MODEL_OVERRIDES,
    ]
    _pipeline(args, tmp_path)
    logged, source = {}, None
    for stage in ("simulate", "generate", "train", "evaluate"):
        run = _one(run_records(tmp_path / "loop" / stage), "run")[0].run
        assert (run.run_group, run.job_type) == ("sweep-8", stage)
        out, used = _artifacts(tmp_path / "loop" / stage)
        name = artifact_name("loop", stage)
        logged[stage] = out[name].digest
        if source is not None:
            assert used[artifact_name("loop", source)].digest == logged[source]
        source = stage
