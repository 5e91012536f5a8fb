"""The exported folder is a plain Hugging Face model: it reloads without matrix code, keeps
the chat template, and generates. LoRA adapters are merged into it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from matrix.train.run import run_train

from .conftest import compose_train, tiny_overrides


@pytest.mark.parametrize("lora", ["false", "true"])
def test_hf_folder_reloads_and_generates(tmp_path, data_dir, lora):
    cfg = compose_train(
        tiny_overrides(
            tmp_path,
            data_dir / "sft_short.jsonl",
            "export",
            f"model.lora.enabled={lora}",
            "model.lora.r=4",
            "trainer.max_steps=2",
            "train.checkpoint.every_n_steps=0",
        )
    )
    manifest = run_train(cfg)
    folder = tmp_path / "export" / "train" / "hf_model"
    assert manifest["hf_model"] == str(folder)
    assert not (folder / "adapter_config.json").exists()  # merged, not an adapter
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    if lora == "true":
        assert manifest["counts"]["trainable_parameters"] < manifest["counts"]["parameters"]
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5 or int(out[0, -1]) == tok.eos_token_id


def test_export_false_trains_and_writes_no_folder(tmp_path, data_dir):
    """`train.export=false` (throughput runs): the run finishes, its manifest says there is no
    model folder, and none is written."""
    cfg = compose_train(
        tiny_overrides(
            tmp_path,
            data_dir / "sft_short.jsonl",
            "noexport",
            "trainer.max_steps=2",
            "train.checkpoint.enabled=false",
            "train.export=false",
        )
    )
    manifest = run_train(cfg)
    assert manifest["counts"]["steps"] == 2
    assert manifest["hf_model"] is None
    assert not (tmp_path / "noexport" / "train" / "hf_model").exists()
