"""Pipeline steps: a stage run again with its own settings into its own folder
(experiment=paper_matrix_tuned: the SFT rows as `generate_sft`, SFT as `train_sft`, the DPO
pairs with rejected answers from that model as `generate`, then DPO from it as `train`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from omegaconf import OmegaConf

from matrix.analysis.compare import compare
from matrix.common.validation import ConfigError
from matrix.core.pipeline import pipeline_steps
from matrix.core.provenance import config_hash
from matrix.core.stage import stage_dir
from tests.common.test_progress import stage_lines
from tests.conftest import RANDOM_MODEL_OVERRIDES, ROOT, compose, tiny_llm_overrides
from tests.doubles import BagOfWords

TUNED_STEPS = ["simulate", "generate_sft", "train_sft", "generate", "train", "evaluate"]


@pytest.mark.parametrize("preset", ["paper_matrix_tuned", "paper_matrix_tuned_tiny"])
def test_matrix_tuned_is_sft_then_dpo_from_the_sft_model(preset: str, tmp_path: Path) -> None:
    cfg = compose("pipeline", [f"experiment={preset}", f"paths.runs_dir={tmp_path}"])
    steps = {s.name: s for s in pipeline_steps(cfg)}
    assert list(steps) == TUNED_STEPS
    sft, dpo = steps["train_sft"], steps["train"]
    assert (sft.stage, dpo.stage) == ("train", "train")
    gen_sft, gen_dpo = steps["generate_sft"], steps["generate"]
    assert (gen_sft.stage, gen_dpo.stage) == ("generate", "generate")
    assert list(gen_sft.cfg.generate.run_sets) == ["general"]
    assert list(gen_dpo.cfg.generate.run_sets) == ["complex"]
    # the pairs' rejected answers come from the SFT step's model (generated after it)
    assert gen_dpo.cfg.generate.rejected_model == str(tmp_path / preset / "train_sft" / "hf_model")
    assert gen_sft.cfg.generate.rejected_model is None
    assert stage_dir(sft.cfg, "train") == tmp_path / preset / "train_sft"
    assert stage_dir(dpo.cfg, "train") == tmp_path / preset / "train"
    # each step's objective block replaces the composed one whole (no DPO option under SFT)
    assert OmegaConf.to_container(sft.cfg.train.objective) == {
        "_target_": "matrix.train.sft.SFTModule"
    }
    assert dpo.cfg.train.objective._target_ == "matrix.train.dpo.DPOModule"
    assert dpo.cfg.train.objective.beta == 0.1
    # SFT starts from the base model, DPO from SFT's export; both train on this run's data
    assert sft.cfg.model.path == cfg.model.path
    assert dpo.cfg.model.path == str(tmp_path / preset / "train_sft" / "hf_model")
    assert sft.cfg.data.sft_path == str(tmp_path / preset / "generate_sft" / "sft.jsonl")
    assert dpo.cfg.data.dpo_path == str(tmp_path / preset / "generate" / "dpo.jsonl")
    # the same hyperparameters (the paper_sft ones) in both steps
    assert sft.cfg.optimizer == dpo.cfg.optimizer and sft.cfg.trainer == dpo.cfg.trainer
    # two runs of one stage, each with its own config hash; other stages are untouched
    assert config_hash(sft.cfg, "train") != config_hash(dpo.cfg, "train")
    assert config_hash(steps["evaluate"].cfg, "evaluate") == config_hash(cfg, "evaluate")
    assert cfg.eval.model.checkpoint == str(tmp_path / preset / "train" / "hf_model")


def test_debug_tiny_dpo_step_loads_the_sft_weights() -> None:
    # debug=tiny builds a random model; only the SFT step may: DPO must load SFT's weights
    cfg = compose("pipeline", ["experiment=paper_matrix_tuned_tiny", "debug=tiny"])
    steps = {s.name: s for s in pipeline_steps(cfg)}
    assert steps["train_sft"].cfg.model.init == "random"
    assert steps["train"].cfg.model.init == "pretrained"


def test_default_pipeline_steps_are_the_four_stages() -> None:
    cfg = compose("pipeline", [])
    steps = pipeline_steps(cfg)
    assert [(s.name, s.stage) for s in steps] == [(s, s) for s in cfg.pipeline.stages]
    assert all(stage_dir(s.cfg, s.stage) == stage_dir(cfg, s.stage) for s in steps)


def test_step_problems_are_reported_at_once_before_any_step_runs() -> None:
    cfg = compose(
        "pipeline",
        [
            "experiment=paper_matrix_tuned_tiny",
            "pipeline.stages=[simulate,bogus,train_sft,train_sft]",
            "+pipeline.steps.train_sft.config.optimizer.lrr=0.1",
        ],
    )
    with pytest.raises(ConfigError) as e:
        pipeline_steps(cfg)
    msg = str(e.value)
    assert "pipeline.stages: 'bogus' is not a stage" in msg
    assert "pipeline.steps.train_sft.config: unknown key optimizer.lrr" in msg


def test_a_step_listed_twice_is_refused() -> None:
    cfg = compose("pipeline", ["pipeline.stages=[simulate,simulate]"])
    with pytest.raises(ConfigError, match="listed twice"):
        pipeline_steps(cfg)


def _pipeline(args: list[str], runs: Path) -> str:
    # MATRIX_PROGRESS_QUIET_S=0: the tiny model's tasks take milliseconds; their tenth lines too
    env = {
        **os.environ,
        "MATRIX_RUNS_DIR": str(runs),
        "PYTHONPATH": str(ROOT),
        "MATRIX_PROGRESS_QUIET_S": "0",
    }
    out = subprocess.run(
        [sys.executable, "-m", "matrix.pipeline", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stderr + out.stdout


def test_paper_matrix_tuned_tiny_runs_sft_then_dpo_in_one_command(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    args = [
        "experiment=paper_matrix_tuned_tiny",
        "debug=tiny",
        "run.name=tuned",
        "logger=none",
        *tiny_llm_overrides(tiny_model_dir),
        *RANDOM_MODEL_OVERRIDES,
        # lr 0 in the DPO step: its weights must then equal train_sft's exactly, which shows it
        # started from them (and not from debug=tiny's random init)
        "+pipeline.steps.train.config.optimizer.lr=0.0",
    ]
    log = _pipeline(args, tmp_path)
    run = tmp_path / "tuned"
    for step in TUNED_STEPS:
        assert f"{step}: running" in log
        assert json.loads((run / step / "manifest.json").read_text())["complete"]
    _assert_progress_lines(log)
    _assert_explorers(run)
    sft = json.loads((run / "train_sft" / "manifest.json").read_text())
    dpo = json.loads((run / "train" / "manifest.json").read_text())
    objective = {m["config"]["train"]["objective"]["_target_"] for m in (sft, dpo)}
    assert (sft["stage"], dpo["stage"]) == ("train", "train")
    assert objective == {"matrix.train.sft.SFTModule", "matrix.train.dpo.DPOModule"}
    assert sft["config"]["train"]["objective"]["_target_"].endswith("SFTModule")
    assert sft["inputs"]["data"]["path"].endswith("generate_sft/sft.jsonl")
    assert dpo["inputs"]["data"]["path"].endswith("/generate/dpo.jsonl")
    # every DPO pair's rejected answer came from the SFT step's model
    pairs = [json.loads(x) for x in (run / "generate" / "dpo.jsonl").read_text().splitlines()]
    assert pairs and all(
        p["lineage"]["models"]["rejecter"] == str(run / "train_sft" / "hf_model") for p in pairs
    )
    assert dpo["config"]["model"]["path"] == str(run / "train_sft" / "hf_model")
    assert sft["counts"]["steps"] > 0 and dpo["counts"]["steps"] > 0
    _assert_same_weights(run / "train_sft" / "hf_model", run / "train" / "hf_model")
    evaluated = json.loads((run / "evaluate" / "manifest.json").read_text())
    assert evaluated["config"]["eval"]["model"]["checkpoint"] == str(run / "train" / "hf_model")
    # the comparison reads the final (DPO) train stage and passes over train_sft/
    result = compare([run], tmp_path / "report", encoder=BagOfWords(), wandb_log=False)
    training = dict((r[0], r[1]) for r in result["tables"]["training"])
    assert training["final_loss"] == "0.6931"  # DPO's ln 2: the policy is its reference (lr 0)
    assert "alpaca_eval2/win_rate" in dict((r[0], r[1]) for r in result["tables"]["evaluation"])
    _assert_model_card(run)

    # A rerun reuses every finished step and reruns the one that did not finish, and the
    # steps downstream of it: evaluate read the model that train now writes again.
    (run / "train" / "manifest.json").unlink()
    log = _pipeline(args, tmp_path)
    for step in ("simulate", "generate_sft", "train_sft", "generate"):
        assert f"{step}: reusing finished run" in log
    assert "train: running (the last run did not finish" in log
    assert "evaluate: running (inputs changed: model" in log
    # evaluate's answers came from the model of the run that did not finish: not resumed
    assert "evaluate: starting fresh; the inputs of its finished run changed: model" in log
    assert "starting fresh" not in log.replace("evaluate: starting fresh", "")
    assert "train_sft: running" not in log

    # Changing a training setting reruns every step downstream of it, and only those: both
    # train steps (their config), the DPO pairs (rejected answers from the SFT model) and
    # evaluate (the model it answers with).
    log = _pipeline([*args, "data.max_seq_len=384"], tmp_path)
    for step in ("simulate", "generate_sft"):
        assert f"{step}: reusing finished run" in log
    assert "train_sft: running (config changed" in log
    assert "generate: running (inputs changed: rejected_model" in log
    assert "train: running (config changed" in log
    assert "evaluate: running (inputs changed: model" in log
    # and each of them starts fresh instead of resuming the old outputs in its folder
    assert "generate: starting fresh; the inputs of its finished run changed: rejected_model" in log
    assert "evaluate: starting fresh; the inputs of its finished run changed: model" in log
    assert log.count("train: starting fresh; its last run had config hash") == 2


def _assert_model_card(run: Path) -> None:
    """The DPO model's card: its base (the SFT model) and that model's licence, the lineage
    of its data as the manifests record it, and the evaluate run's score; the report beside."""
    card = ModelCard.load(run / "train" / "hf_model" / "README.md")
    assert card.data.base_model == str(run / "train_sft" / "hf_model")
    assert (
        card.data.license
        == ModelCard.load(run / "train_sft" / "hf_model" / "README.md").data.license
    )
    lineage = card.data.to_dict()["matrix"]["data"]
    assert lineage["file"] == str(run / "generate" / "dpo.jsonl")
    generated = json.loads((run / "generate" / "manifest.json").read_text())
    assert lineage["generate"]["run"] == str(run / "generate")
    assert {n: s["rows"] for n, s in lineage["generate"]["sets"].items()} == {
        s["name"]: s["rows"] for s in generated["sets"]
    }
    simulated = json.loads((run / "simulate" / "manifest.json").read_text())
    assert lineage["simulation"]["run"] == str(run / "simulate")
    assert lineage["simulation"]["scenarios"] == simulated["counts"]["scenarios"] > 0
    scores = json.loads((run / "evaluate" / "scores.json").read_text())["scores"]
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("alpaca_eval2", "win_rate")] == pytest.approx(
        scores["alpaca_eval2"]["win_rate"]
    )
    assert "](loss.png)" in (run / "train" / "report.md").read_text()


def _assert_progress_lines(log: str) -> None:
    """Each stage's progress in the log (not a terminal): plain lines with counts and an ETA,
    up to the whole of each task (tests/train/test_loggers.py checks an epoch step by step)."""
    lines = {
        stage: stage_lines(log, stage) for stage in ("simulate", "generate", "train", "evaluate")
    }
    done = {s: {m["what"] for m in ms if m["done"] == m["total"]} for s, ms in lines.items()}
    assert {"rounds", "phases"} <= done["simulate"], lines["simulate"]
    assert {"set general", "set complex"} <= done["generate"], lines["generate"]
    assert {"tokenizing", "epoch 1", "epoch 2"} <= done["train"], lines["train"]
    assert {"answering alpaca_eval2", "judging alpaca_eval2"} <= done["evaluate"]
    # a round's phases, before its end, with the time left; the epochs with loss and lr
    assert any(m["what"] == "phases" and m["eta"] != "0s" for m in lines["simulate"])
    epochs = [m for m in lines["train"] if m["what"].startswith("epoch")]
    assert all(re.search(r" loss=[\d.]+ lr=[\d.e+-]+$", m.string) for m in epochs)


def _assert_explorers(run: Path) -> None:
    """simulate/ and generate/ each wrote their explorer page; a generated row's scenario is
    in the simulate page, which the generate page links to by relative path."""
    data = {}
    for step in ("simulate", "generate_sft"):
        html = (run / step / "explorer.html").read_text()
        data[step] = json.loads(html.split('id="explorer-data">')[1].split("</script>")[0])
    sim = {s["name"]: s["rows"] for s in data["simulate"]["sections"]}
    gen = data["generate_sft"]
    assert gen["external"]["scenarios"] == "../simulate/explorer.html"
    rows = next(s["rows"] for s in gen["sections"] if s["name"] == "rows")
    scenario_ids = {s["id"] for s in sim["scenarios"]}
    assert rows and all(set(r["scenario_ids"]) <= scenario_ids for r in rows)
    assert sim["events"] and sim["agents"] and sim["groups"] and sim["rounds"]


def _assert_same_weights(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all((wa[k] == wb[k]).all() for k in wa)


@pytest.mark.slow
def test_two_train_steps_under_ddp_on_two_cpu_processes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Lightning starts rank 1 by rerunning the command: it joins both train steps (waiting for
    # rank 0's SFT export before DPO) and leaves simulate, generate and evaluate to rank 0.
    log = _pipeline(
        [
            "experiment=paper_matrix_tuned_tiny",
            "debug=tiny",
            "run.name=ddp",
            "logger=none",
            *tiny_llm_overrides(tiny_model_dir),
            *RANDOM_MODEL_OVERRIDES,
            "trainer.strategy=ddp",
            "trainer.devices=2",
            "data.packing=false",  # one row per rank and batch: the tiny data has two
            "data.batch_size=1",
            "pipeline.objective=alpaca_eval2/avg_length",
        ],
        tmp_path,
    )
    counts = {step: log.count(f"{step}: running") for step in TUNED_STEPS}
    assert counts == {
        "simulate": 1,
        "generate_sft": 1,
        "train_sft": 2,
        "generate": 1,
        "train": 2,
        "evaluate": 1,
    }
    for step in ("train_sft", "train"):
        manifest = json.loads((tmp_path / "ddp" / step / "manifest.json").read_text())
        assert manifest["counts"]["steps"] > 0
