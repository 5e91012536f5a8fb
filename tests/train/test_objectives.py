"""Objectives are components: the pair statistics the preference objectives share, and a toy
objective that lives only in a module of the user's, named by config. Each shipped objective's
own test (test_orpo.py, test_simpo.py) checks its loss against its paper's formula on a batch
computed by hand (tests/train/pairs.py) and trains it on debug-sized data."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from matrix.common.io import read_jsonl
from matrix.common.validation import ConfigError
from matrix.train.dpo import pair_stats
from matrix.train.run import run_train
from tests.train.conftest import compose_train, tiny_overrides


def test_pair_stats_are_the_sequences_log_probs_and_lengths(tokenizer, data_dir, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from matrix.train.datamodule import ChatDataModule
    from matrix.train.lm import forward_logits, token_logps

    dm = ChatDataModule(data_dir / "dpo.jsonl", tokenizer, "pairs", 256, 2, packing=False)
    dm.setup()
    batch = dm.collate_units(dm.units[:2])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    s = pair_stats(model, batch)
    logp, mask = token_logps(forward_logits(model, batch), batch["labels"])
    per_seq = logp.sum(1)  # padded rows: one sequence per row, chosen and rejected alternate
    tokens = mask.sum(1).float()
    # the same fp32 log-probs summed in another order (sliced head vs full logits): float32's
    # eps (1.2e-7) over at most 256 terms a sequence bounds the difference by ~3e-5 relative
    torch.testing.assert_close(s.chosen, per_seq[0::2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.rejected_tokens, tokens[1::2])


def test_an_objective_in_a_users_module_is_named_by_config_alone(tmp_path, data_dir, monkeypatch):
    """What the README's "add a training objective" row says: one module, named by
    `_target_`, no edit in matrix/."""
    (tmp_path / "my_objectives.py").write_text(
        textwrap.dedent(
            '''
            from matrix.train.sft import SFTModule


            class ScaledSFT(SFTModule):
                """SFT with the loss scaled by `scale` (a toy)."""

                def __init__(self, *args, scale: float = 1.0, **kwargs):
                    super().__init__(*args, **kwargs)
                    self.scale = scale

                def training_step(self, batch, batch_idx):
                    loss = super().training_step(batch, batch_idx)
                    self.step_metrics["scaled"] = self.scale
                    return loss * self.scale
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_train(
        tiny_overrides(
            tmp_path / "runs",
            data_dir / "sft.jsonl",
            "toy",
            "train.objective._target_=my_objectives.ScaledSFT",
            "+train.objective.scale=0.5",
            "trainer.max_steps=2",
            "train.checkpoint.every_n_steps=0",
        )
    )
    manifest = run_train(cfg)
    rows = read_jsonl(tmp_path / "runs" / "toy" / "train" / "metrics.jsonl")
    assert manifest["counts"]["steps"] == 2 and [r["train/scaled"] for r in rows] == [0.5, 0.5]
    sys.modules.pop("my_objectives", None)


def test_a_wrong_option_type_or_choice_exits_2_naming_the_key(tmp_path):
    import subprocess

    from tests.conftest import ROOT

    out = subprocess.run(
        [
            sys.executable,
            "train.py",
            "debug=tiny",
            f"paths.runs_dir={tmp_path}",
            "objective=dpo",
            "train.objective.reference=copy",
            "optimizer.lr=fast",
            "scheduler._target_=torch.optim.lr_scheduler.NoSuchSchedule",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert "train.objective.reference: 'copy' is not one of 'model', 'precomputed'" in out.stderr
    assert "optimizer.lr: 'fast' is not a number" in out.stderr
    assert "scheduler._target_: cannot import torch.optim.lr_scheduler.NoSuchSchedule" in out.stderr


def test_a_callback_in_a_users_module_is_named_by_config_alone(tmp_path, data_dir, monkeypatch):
    (tmp_path / "my_callbacks.py").write_text(
        textwrap.dedent(
            '''
            from pathlib import Path

            import lightning as L


            class StepFile(L.Callback):
                """Writes the optimizer steps it saw to `path` (a toy)."""

                def __init__(self, path: str):
                    self.path, self.steps = Path(path), []

                def on_train_batch_end(self, trainer, *args):
                    self.steps.append(trainer.global_step)

                def on_train_end(self, trainer, module):
                    self.path.write_text(",".join(map(str, self.steps)))
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = tmp_path / "steps.txt"
    overrides = tiny_overrides(
        tmp_path / "runs",
        data_dir / "sft.jsonl",
        "cb",
        "+train.callbacks.steps._target_=my_callbacks.StepFile",
        f"+train.callbacks.steps.path={seen}",
        "trainer.max_steps=2",
        "train.checkpoint.every_n_steps=0",
    )
    run_train(compose_train(overrides))
    assert seen.read_text() == "1,2"
    # a typo in its options is caught before any model loads
    bad = compose_train([*overrides, "+train.callbacks.steps.pth=x"])
    with pytest.raises(ConfigError, match=r"train.callbacks.steps.pth: unknown option"):
        run_train(bad)
    sys.modules.pop("my_callbacks", None)
