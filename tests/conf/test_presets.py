from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from matrix.core.provenance import config_hash
from matrix.core.registry import STAGES
from matrix.core.sweep import name_sweep_job
from tests.conftest import CONF, ROOT, tiny_llm_overrides

PAPER_PRESETS = [
    "paper_sft_10k",
    "paper_matrix_tuned",
    "comm_ablation",
    "code",
    "safety",
    "multi_turn",
]
ALL_PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
TINY_PRESETS = [p for p in ALL_PRESETS if p.endswith("_tiny")]
STAGE_CONFIGS = ["pipeline", "simulate", "generate", "train", "evaluate"]
DOC = ROOT / "docs" / "experiments.md"


def _compose(config_name: str, overrides: list[str], hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=hydra_cfg)


def test_every_paper_result_has_a_preset_and_a_tiny_variant() -> None:
    for name in PAPER_PRESETS:
        assert name in ALL_PRESETS and f"{name}_tiny" in TINY_PRESETS


@pytest.mark.parametrize("preset", ALL_PRESETS)
@pytest.mark.parametrize("config_name", STAGE_CONFIGS)
def test_preset_composes_for_every_stage(preset: str, config_name: str) -> None:
    cfg = _compose(config_name, [f"experiment={preset}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for stage in STAGES:
        assert len(config_hash(cfg, stage)) == 12
    if preset in PAPER_PRESETS or preset in TINY_PRESETS:
        # a literal name, so the W&B group survives the sweep renaming run.name
        assert resolved["experiment_name"] == preset
        assert resolved["eval"]["model"]["checkpoint"].endswith(f"{preset}/train/hf_model")


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_preset_header_names_its_paper_number(preset: str) -> None:
    header = "".join(
        line
        for line in (ROOT / "conf" / "experiment" / f"{preset}.yaml").read_text().splitlines()
        if line.startswith("#")
    )
    numbers = set(re.findall(r"\d+\.\d+", header))
    assert numbers, f"{preset}.yaml: the header names no paper number"
    # the same numbers as the preset table of docs/experiments.md (taken from the paper)
    assert numbers <= set(re.findall(r"\d+\.\d+", DOC.read_text()))


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_tiny_preset_composes_on_the_tiny_model(preset: str, tmp_path: Path) -> None:
    overrides = [f"experiment={preset}", *tiny_llm_overrides(tmp_path / "tiny-llama")]
    cfg = _compose("pipeline", overrides)
    OmegaConf.resolve(cfg)
    assert cfg.llm.backends.smollm2.model == str(tmp_path / "tiny-llama")
    assert cfg.population.size <= 8 and cfg.simulation.max_rounds <= 4
    assert all(s.target <= 32 for s in cfg.generator.sets.values())
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1
    assert all(b.limit is not None and b.limit <= 8 for b in cfg.eval.benchmarks.values())
    full = _compose("pipeline", [f"experiment={preset.removesuffix('_tiny')}"])
    # the same loop as the paper preset: same data sets and benchmarks, only smaller
    assert set(cfg.generator.sets) == set(full.generator.sets)
    assert set(cfg.eval.benchmarks) == set(full.eval.benchmarks)
    assert cfg.train.objective == full.train.objective


def test_debug_tiny_shrinks_a_tiny_preset_further(tmp_path: Path) -> None:
    cfg = _compose("pipeline", ["experiment=comm_ablation_tiny", "debug=tiny"])
    assert cfg.model.init == "random" and cfg.experiment_name == "comm_ablation_tiny"


def test_comm_ablation_sweeps_three_arms() -> None:
    cfg = _compose("pipeline", ["experiment=comm_ablation_tiny"], hydra_cfg=True)
    assert cfg.hydra.sweeper.params.communication == "none,random,structured"


@pytest.mark.parametrize(
    ("preset", "key", "arms"),
    [
        ("paper_scale_agents", "population.size", [100, 200, 500, 1000]),
        ("paper_scale_scenarios", "generate.retrieval.top_k", [100, 1000, 10000]),
    ],
)
def test_figure_4_sweeps_scale_one_key_of_the_sft_10k_loop(preset, key, arms) -> None:
    """Fig. 4a/4b: each arm is paper_sft_10k with one key set; the scenario sweep's simulation
    makes enough scenarios for its largest arm within its round bound."""
    from matrix.sim.run import resolve_k

    cfg = _compose("pipeline", [f"experiment={preset}"], hydra_cfg=True)
    assert [int(a) for a in str(cfg.hydra.sweeper.params[key]).split(",")] == arms
    base = _compose("pipeline", ["experiment=paper_sft_10k"])
    for arm in arms:
        one = _compose("pipeline", [f"experiment={preset}", f"{key}={arm}"])
        assert OmegaConf.select(one, key) == arm
        for block in ("model", "trainer", "optimizer", "scheduler", "train", "generator"):
            assert one[block] == base[block], f"{preset}: {block} differs from paper_sft_10k"
        for k in ("benchmarks", "sampling"):  # judged as the MATRIX row
            assert one.eval[k] == base.eval[k]
    sim = cfg.simulation
    if key == "generate.retrieval.top_k":
        assert sim.target_scenarios >= max(arms)
    groups = resolve_k(cfg.communication.k, 959)  # the adults of the 1,000 shipped profiles
    assert sim.max_rounds >= sim.target_scenarios * cfg.scenario.interval / groups


def test_table_11_runs_the_sft_10k_loop_on_qwen2() -> None:
    cfg = _compose("pipeline", ["experiment=paper_qwen2_sft_10k"])
    base = _compose("pipeline", ["experiment=paper_sft_10k"])
    assert cfg.model.path == "Qwen/Qwen2-7B" and cfg.model.chat_template == "chatml"
    for block in ("generator", "trainer", "optimizer", "scheduler", "train"):
        assert cfg[block] == base[block], f"{block} differs from paper_sft_10k"
    assert cfg.eval.benchmarks == base.eval.benchmarks


def test_safety_trains_from_the_matrix_tuned_model(tmp_path: Path) -> None:
    """The paper's safety rows start from MATRIX-Tuned: the final export of a
    paper_matrix_tuned run; before that run exists, the check says to run it first."""
    from matrix.common.validation import ConfigProblems
    from matrix.train.preflight import check_model

    tuned = _compose("pipeline", ["experiment=paper_matrix_tuned"])
    stages = [s if isinstance(s, str) else next(iter(s)) for s in tuned.pipeline.stages]
    assert stages[-2:] == ["train", "evaluate"]  # its last training step writes train/
    for preset in ("safety", "paper_baseline_hh"):
        cfg = _compose("pipeline", [f"experiment={preset}", f"paths.runs_dir={tmp_path}"])
        assert cfg.model.path == f"{tmp_path}/paper_matrix_tuned/train/hf_model"
        p = ConfigProblems()
        check_model(cfg, p)
        text = " ".join(msg for _, msg in p.items)
        assert "exported model of run 'paper_matrix_tuned'" in text, text
        assert "experiment=paper_matrix_tuned" in text


def _sweep_job(overrides: list[str], arm: str, num: int):
    cfg = _compose("pipeline", ["experiment=comm_ablation_tiny", *overrides], hydra_cfg=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.job.override_dirname = ",".join(sorted(cfg.hydra.overrides.task))
        cfg.hydra.job.num = num
        cfg.hydra.sweep.dir = "runs/multirun/pipeline/2026-01-01_00-00-00"
    HydraConfig.instance().set_config(cfg)
    hydra_node = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        name_sweep_job(cfg)
    finally:
        HydraConfig.instance().cfg = None
    return cfg, hydra_node


def test_name_sweep_job_gives_distinct_runs_under_one_sweep() -> None:
    arms = ["communication=none", "communication=random", "communication=structured"]
    fixed = ["debug=tiny", "llm.backends.smollm2.model=/m/tiny", "run.name=comm_ablation_tiny"]
    cfgs = [_sweep_job([*fixed, a], a, i)[0] for i, a in enumerate(arms)]
    names = [c.run.name for c in cfgs]
    assert names == [f"comm_ablation_tiny/{a}" for a in arms]
    assert len({c.run.sweep_id for c in cfgs}) == 1
    assert {c.experiment_name for c in cfgs} == {"comm_ablation_tiny"}
    # every stage of an arm reads and writes inside that arm's run dir
    for c, a in zip(cfgs, arms, strict=True):
        assert c.generate.simulation_dir.endswith(f"comm_ablation_tiny/{a}/simulate")
        assert c.data.sft_path.endswith(f"comm_ablation_tiny/{a}/generate/sft.jsonl")
        assert c.eval.model.checkpoint.endswith(f"comm_ablation_tiny/{a}/train/hf_model")
    # the arms differ in the simulate config hash, so none reuses another's simulation
    assert len({config_hash(c, "simulate") for c in cfgs}) == 3


def test_the_shards_of_a_sweep_share_their_arm_run_dir() -> None:
    """`-m shard.index=0,1` splits one run: both jobs write its shards/ folder, which the
    merge joins (an arm per shard would leave the merge no shards to find). Sharded arms of
    another swept key are one run dir per arm."""
    fixed = ["debug=tiny", "run.name=big", "shard.count=2"]
    names = [_sweep_job([*fixed, f"shard.index={i}"], "", i)[0].run.name for i in (0, 1)]
    assert names == ["big", "big"]
    arms = [
        _sweep_job([*fixed, f"shard.index={i}", f"communication={c}"], "", 2 * j + i)[0]
        for j, c in enumerate(("none", "random"))
        for i in (0, 1)
    ]
    assert [c.run.name for c in arms] == [
        "big/communication=none",
        "big/communication=none",
        "big/communication=random",
        "big/communication=random",
    ]
    # jobs that differ in nothing that names an arm still get one run dir each
    assert _sweep_job(["debug=tiny", "run.name=big"], "", 3)[0].run.name == "big/3"


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_presets_simulate_until_their_scenario_target(preset: str) -> None:
    from matrix.sim.run import resolve_k

    cfg = _compose("pipeline", [f"experiment={preset}"])
    sim, pop = cfg.simulation, cfg.population
    assert sim.target_scenarios >= 5000  # docs/reproducing.md budgets 5,000 scenarios
    # the round bound must leave room to reach the target: k groups summarize every interval
    k = resolve_k(cfg.communication.k, 1000)
    assert sim.max_rounds >= sim.target_scenarios * cfg.scenario.interval / k
    assert pop.anonymize == "llm" and pop.min_age == 18 and pop.size is None


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_preset_passes_the_pipeline_config_check(preset: str) -> None:
    """What `python -m matrix.pipeline experiment=<preset>` checks before its first step: every
    step's keys and typed values (pipeline_steps raises one ConfigError listing them)."""
    from matrix.core.pipeline import pipeline_steps

    cfg = _compose("pipeline", [f"experiment={preset}"])
    assert [s.name for s in pipeline_steps(cfg)] == list(cfg.pipeline.stages)


BASELINES = sorted(p for p in ALL_PRESETS if p.startswith("paper_baseline_"))
# a second row on a dataset that has its own paper_baseline_<dataset>: the dataset it reads
VARIANTS = {
    "paper_baseline_magpie_air_300k": "magpie_air",
    "paper_baseline_sharegpt_mt": "sharegpt",
}
FULL_SET = {"paper_baseline_magpie_air_300k"}  # a row on the whole published set (Table 4)
# what a baseline row may change from its MATRIX row: the data it reads, and where it writes
DATA_SOURCE_KEYS = {"name", "format", "columns", "path", "sample", "generate_command"}
DATA_SOURCE_KEYS |= {"generate_run", "sft_path", "dpo_path"}


@functools.cache
def _train_step(preset: str):
    """The composed config of `preset` and of its `train` step, resolved (read-only: composed
    once for every test that compares with it)."""
    from matrix.core.pipeline import pipeline_steps

    cfg = _compose("pipeline", [f"experiment={preset}"])
    OmegaConf.resolve(cfg)
    steps = {s.name: s.cfg for s in pipeline_steps(cfg)}
    for c in (cfg, steps["train"]):
        OmegaConf.set_readonly(c, True)
    return cfg, steps["train"]


def _matrix_row(preset: str) -> str:
    """The preset a baseline is compared with: the first in its defaults list (paper_dpo's
    baselines: the DPO step of paper_matrix_tuned)."""
    text = (ROOT / "conf" / "experiment" / f"{preset}.yaml").read_text()
    first = re.search(r"^defaults:\n  - (\w+)", text, re.M).group(1)
    return "paper_matrix_tuned" if first == "paper_dpo" else first


def test_every_baseline_dataset_has_a_preset() -> None:
    formats = {
        p.stem: OmegaConf.load(p).get("format") for p in (ROOT / "conf" / "data").glob("*.yaml")
    }
    published = sorted(name for name, fmt in formats.items() if fmt not in (None, "matrix"))
    assert [f"paper_baseline_{name}" for name in published] == sorted(
        set(BASELINES) - set(VARIANTS)
    )
    assert len(BASELINES) == 21
    for preset, dataset in VARIANTS.items():
        assert preset in BASELINES and _train_step(preset)[0].data.name == dataset


@pytest.mark.parametrize("preset", BASELINES)
def test_baseline_trains_and_evaluates_as_its_matrix_row(preset: str) -> None:
    cfg, train = _train_step(preset)
    row_cfg, row_train = _train_step(_matrix_row(preset))
    assert cfg.data.format != "matrix" and list(cfg.pipeline.stages) == ["train", "evaluate"]
    for block in ("model", "trainer", "optimizer", "scheduler", "train"):
        assert train[block] == row_train[block], f"{preset}: {block} differs from its MATRIX row"
    same_data = {k: v for k, v in train.data.items() if k not in DATA_SOURCE_KEYS}
    assert same_data == {k: v for k, v in row_train.data.items() if k not in DATA_SOURCE_KEYS}
    # as many rows as the MATRIX row's data set, or the whole published set
    targets = {s.target for s in row_cfg.generator.sets.values()}
    if preset in FULL_SET:
        assert train.data.sample is None
    else:
        assert train.data.sample in targets
    for key in ("benchmarks", "sampling"):
        assert cfg.eval[key] == row_cfg.eval[key]
    assert cfg.llm.roles.judge == row_cfg.llm.roles.judge
    assert cfg.eval.model.checkpoint.endswith(f"{preset}/train/hf_model")


@pytest.mark.parametrize("preset", BASELINES)
def test_baseline_preset_reads_its_formats_sample_in_preflight(preset: str) -> None:
    from matrix.common.io import resolve_data_path
    from matrix.common.validation import ConfigProblems
    from matrix.train.preflight import check_data

    train = copy.deepcopy(_train_step(preset)[1])
    OmegaConf.set_readonly(train, False)
    # the dataset's own sample where its keys differ from its format's (data.columns), else the
    # format's
    samples = resolve_data_path("matrix:data/samples")
    sample = next(samples.glob(f"{train.data.name}.*"), None) or next(
        samples.glob(f"{train.data.format}.*")
    )
    train.data.path = str(sample)
    p = ConfigProblems()
    check_data(train, p)
    assert not p.items, p.items


def test_llama3_instruct_reference_is_evaluated_untrained() -> None:
    cfg = _compose("pipeline", ["experiment=paper_reference_llama3_instruct"])
    assert list(cfg.pipeline.stages) == ["evaluate"]
    assert cfg.eval.model.checkpoint is None
    served = cfg.llm.roles[cfg.eval.model.role].backend
    assert cfg.llm.backends[served].model == "llama3-8b-instruct"
    assert set(cfg.eval.benchmarks) == {"alpaca_eval2", "arena_hard"}
