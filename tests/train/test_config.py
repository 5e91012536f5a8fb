"""Every config option composes, the paper presets carry the paper's numbers, and bad
configs fail before any model loads with every problem listed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from matrix.common.validation import ConfigError
from matrix.train.attention import select_attention
from matrix.train.preflight import validate
from matrix.train.run import total_steps

from .conftest import CONF, compose_train

ROOT = Path(CONF).parent


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml") if not p.stem.startswith("_"))


@pytest.mark.parametrize(
    "group", ["model", "optimizer", "scheduler", "trainer", "data", "objective", "experiment"]
)
def test_every_option_composes(group):
    names = options(group)
    assert names
    for name in names:
        cfg = compose_train([f"{group}={name}"])
        assert cfg.train.objective._target_.startswith("matrix.train.")
        assert cfg.model.attn_implementation in (
            "auto",
            "flash_attention_2",
            "flex_attention",
            "sdpa",
            "eager",
        )
        from omegaconf import OmegaConf

        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_paper_presets_carry_the_paper_settings():
    sft = compose_train(["experiment=paper_sft"])
    assert (sft.trainer.max_epochs, sft.optimizer.lr, sft.optimizer.weight_decay) == (2, 2e-5, 0.0)
    assert (sft.data.batch_size, sft.trainer.accumulate_grad_batches) == (1, 8)
    assert sft.trainer.devices == 8 and sft.data.max_seq_len == 4096
    assert sft.model.chat_template == "llama3"
    assert sft.scheduler._target_ == "matrix.train.optim.cosine_schedule"
    assert sft.train.objective._target_ == "matrix.train.sft.SFTModule"
    dpo = compose_train(["experiment=paper_dpo"])
    assert dpo.train.objective._target_ == "matrix.train.dpo.DPOModule"
    assert dpo.train.objective.beta == 0.1
    assert dpo.model.path.endswith("paper_sft/train/hf_model")
    assert dpo.data.dpo_path.endswith("matrix_20k/generate/dpo.jsonl")


def test_debug_preset_composes_with_tiny_model():
    cfg = compose_train(["debug=tiny"])
    assert cfg.model.init == "random" and cfg.trainer.max_steps > 0


def test_cfg_job_prints_the_composed_config():
    out = subprocess.run(
        [sys.executable, "train.py", "model=llama3_8b", "data=matrix_20k", "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "name: llama3_8b" in out.stdout and "generate_run: matrix_20k" in out.stdout


def test_preflight_lists_every_problem_at_once(tmp_path):
    folder = tmp_path / "base_model"
    folder.mkdir()
    (folder / "config.json").write_text('{"max_position_embeddings": 1024}')
    (folder / "tokenizer.json").write_text("{}")
    cfg = compose_train(
        [
            f"paths.runs_dir={tmp_path}",
            "data=matrix_20k",
            f"model.path={folder}",
            "model.chat_template=null",
            "data.max_seq_len=4096",
        ]
    )
    with pytest.raises(ConfigError) as e:
        validate(cfg).raise_if_any("train")
    msg = str(e.value)
    assert len(e.value.problems) == 3
    assert f"{tmp_path}/matrix_20k/generate/sft.jsonl does not exist" in msg
    assert "python generate.py run.name=matrix_20k" in msg
    assert "no chat template" in msg
    assert "data.max_seq_len=4096 exceeds the model's context (1024" in msg


def test_preflight_rejects_wrong_row_kind(tmp_path, data_dir):
    cfg = compose_train(
        ["model=tiny_debug", "objective=dpo", f"data.path={data_dir / 'sft.jsonl'}"]
    )
    with pytest.raises(ConfigError, match="lacks"):
        validate(cfg).raise_if_any("train")


def test_attention_selection():
    assert select_attention("auto", packed=True, cuda=False) == "sdpa_varlen"
    assert select_attention("auto", packed=False, cuda=False) == "sdpa"
    assert select_attention("eager", packed=False, cuda=False) == "eager"
    with pytest.raises(ValueError, match="CUDA"):
        select_attention("flash_attention_2", packed=True, cuda=False)
    with pytest.raises(ValueError):
        select_attention("magic", packed=True, cuda=False)


def test_attention_auto_on_gpu(monkeypatch):
    import matrix.train.attention as attention

    monkeypatch.setattr(attention, "flash_attn_available", lambda: False)
    assert attention.select_attention("auto", packed=True, cuda=True) == "flex_attention"
    assert attention.select_attention("auto", packed=False, cuda=True) == "sdpa"
    monkeypatch.setattr(attention, "flash_attn_available", lambda: True)
    assert attention.select_attention("auto", packed=False, cuda=True) == "flash_attention_2"


def test_total_steps_counts_partial_accumulation_windows():
    cfg = compose_train(["trainer.accumulate_grad_batches=4", "trainer.max_epochs=2"])
    assert total_steps(cfg, 10) == 6
    cfg = compose_train(["trainer.max_steps=5", "trainer.max_epochs=2"])
    assert total_steps(cfg, 10) == 5
