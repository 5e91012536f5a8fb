"""What reproducing the paper costs: judge calls, tokens and dollars per benchmark, and the
GPU-hours of the training runs. Estimates, not measurements; docs/experiments.md explains them.

    python scripts/paper_costs.py                         # defaults below
    python scripts/paper_costs.py --answer-words 250 --prompt-price 10 --completion-price 30

Judge side: every judged benchmark runs its real `answer` and `judge` code against two
recording doubles (labelled as such): the "model" answers each question with
`--answer-words` words, the "judge" returns a verdict every parser accepts, so no retry is
counted. Prompt tokens are counted from the rendered judge prompts (about 4 characters per
token, the ledger's estimate); completion tokens are each benchmark's judge max_new_tokens,
an upper bound.

Training side: FLOPs per token of the Llama-3-8B architecture (built on the meta device from
its published config: no weights needed) times the tokens of a run, over a GPU's peak bf16
FLOPs at a given MFU.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from matrix.eval.benchmarks import BENCHMARKS
from matrix.llm.ledger import estimate_prompt_tokens
from matrix.llm.protocol import Completion
from matrix.train.throughput import training_flops_per_token

# Any judge parser accepts this: `m` first (AlpacaEval), one [[A>B]] (Arena-Hard), [[5]] /
# [5] (MT-Bench, MT-Bench-101), a refusal class (XSTest).
UNIVERSAL_VERDICT = "m [[A>B]] [[5]] 1_full_compliance Score: 5"
LLAMA3_8B = LlamaConfig(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
)
H100_BF16_DENSE = 989e12
CONF = Path(__file__).resolve().parents[1] / "conf"


class RecordingLLM:
    """Double (not a model): answers every chat with `text` and records the chats."""

    def __init__(self, text: str, name: str):
        self.text, self.name, self.chats = text, name, []

    def generate(self, chats: Sequence[Any], **sampling: Any) -> list[Completion]:
        self.chats.extend(chats)
        return [Completion(self.text, 0, 0, "stop") for _ in chats]


def shipped_settings(name: str) -> Any:
    """The benchmark's settings in conf/eval/<name>.yaml (judge max_new_tokens among them)."""
    return OmegaConf.load(CONF / "eval" / f"{name}.yaml").benchmarks[name]


def judge_costs(answer_words: int, prompt_price: float, completion_price: float) -> None:
    print("| benchmark | judge calls | prompt tokens | completion tokens (max) | cost US$ |")
    print("|---|---|---|---|---|")
    total = 0.0
    for name, cls in BENCHMARKS.items():
        if not cls.uses_judge or name == "custom":  # custom: your questions, not the paper's
            continue
        bench = cls(shipped_settings(name))
        items = bench.load()
        model = RecordingLLM(" ".join(["word"] * answer_words) + ".", "model-double")
        judge = RecordingLLM(UNIVERSAL_VERDICT, "judge-double")
        answers = bench.answer(model, items)
        bench.judge(judge, items, answers)
        if not judge.chats:  # a benchmark whose judge is off by default (safety: keywords)
            continue
        prompt = sum(estimate_prompt_tokens(c) for c in judge.chats)
        max_out = int((bench.opt("judge_sampling", {}) or {}).get("max_new_tokens", 1024))
        completion = len(judge.chats) * max_out
        cost = (prompt * prompt_price + completion * completion_price) / 1e6
        total += cost
        print(f"| {name} | {len(judge.chats):,} | {prompt:,} | {completion:,} | {cost:,.2f} |")
    print(f"| all | | | | {total:,.2f} |")


def train_hours(tokens: float, context: int, mfu: float) -> tuple[float, float]:
    with torch.device("meta"):
        model = LlamaForCausalLM(LLAMA3_8B)
    per_token = training_flops_per_token(model, context)
    return per_token, tokens * per_token / (mfu * H100_BF16_DENSE) / 3600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--answer-words", type=int, default=300)
    ap.add_argument("--prompt-price", type=float, default=10.0, help="US$ per 1M tokens")
    ap.add_argument("--completion-price", type=float, default=30.0, help="US$ per 1M tokens")
    ap.add_argument("--row-tokens", type=int, default=600, help="mean tokens per SFT row")
    ap.add_argument("--mfu", type=float, default=0.35)
    args = ap.parse_args()

    print(
        f"## Judge (answers of {args.answer_words} words; ${args.prompt_price}/${args.completion_price} per 1M)\n"
    )
    judge_costs(args.answer_words, args.prompt_price, args.completion_price)

    print(
        f"\n## Training Llama-3-8B (H100 bf16, MFU {args.mfu:.0%}, {args.row_tokens} tokens/row)\n"
    )
    print("| run | tokens | FLOPs/token | H100-hours |")
    print("|---|---|---|---|")
    runs = {
        # 10K rows x 2 epochs
        "SFT 10K (paper_sft_10k)": 10_000 * args.row_tokens * 2,
        # chosen + rejected, policy forward+backward; the frozen reference's forward adds
        # 1/3 of that (2N of 6N FLOPs per token)
        "DPO 10K pairs, 2 epochs (paper_dpo)": 10_000 * 2 * args.row_tokens * 2 * (4 / 3),
    }
    for name, tokens in runs.items():
        per_token, hours = train_hours(tokens, args.row_tokens, args.mfu)
        print(f"| {name} | {tokens / 1e6:.1f}M | {per_token:.3g} | {hours:.2f} |")


if __name__ == "__main__":
    main()
