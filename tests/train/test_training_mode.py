"""The train stage trains in training mode: transformers' gradient checkpointing and every
dropout (LoRA's included) only run in training mode, and `from_pretrained` returns a model in
eval mode that Lightning would otherwise keep as it is."""

from __future__ import annotations

import lightning as L
import pytest

from matrix.train.models import build_model, load_tokenizer
from matrix.train.run import run_train

from .conftest import compose_train, tiny_overrides, write_sft


class ModeProbe(L.Callback):
    """Records, at every training batch, the modules found in eval mode and how often the
    first decoder layer's MLP ran (twice per step with gradient checkpointing: forward, then
    recomputed in the backward pass)."""

    def __init__(self) -> None:
        self.eval_modules: list[list[str]] = []
        self.layer_calls: list[int] = []
        self._calls = 0

    def on_train_start(self, trainer, pl_module) -> None:
        # inside the layer: transformers checkpoints the layer's forward, its hooks stay outside
        mlp = next(m for n, m in pl_module.model.named_modules() if n.endswith("layers.0.mlp"))
        # a pre-hook: a recomputation stops once it has what backward needs, before forward returns
        mlp.register_forward_pre_hook(lambda *_: setattr(self, "_calls", self._calls + 1))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._calls = 0
        names = [n for n, m in pl_module.model.named_modules() if not m.training]
        self.eval_modules.append(names)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.layer_calls.append(self._calls)


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """tiny_debug saved as a pretrained folder: loading it goes through from_pretrained."""
    cfg = compose_train(["model=tiny_debug"])
    tok = load_tokenizer(cfg.model)
    folder = tmp_path_factory.mktemp("tiny_pretrained")
    build_model(cfg.model, tok, "sdpa", seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("lora", [False, True])
def test_the_stage_trains_in_training_mode_with_checkpointing_on(tmp_path, pretrained_dir, lora):
    cfg = compose_train(
        tiny_overrides(
            tmp_path,
            write_sft(tmp_path / "sft.jsonl", 32),
            f"mode_{lora}",
            "model.init=pretrained",
            f"model.path={pretrained_dir}",
            "model.gradient_checkpointing=true",
            f"model.lora.enabled={str(lora).lower()}",
            "data.batch_size=4",
            "trainer.max_steps=2",
            "train.checkpoint.every_n_steps=0",
        )
    )
    probe = ModeProbe()
    run_train(cfg, callbacks=[probe])
    assert len(probe.eval_modules) == 2
    assert probe.eval_modules == [[], []], probe.eval_modules[0][:5]
    assert probe.layer_calls == [2, 2]  # checkpointed: the layer ran again in backward
