"""Local generation on a CPU in float32 (the `hf` backend's `dtype: auto` there: the baseline)
against bfloat16 (`llm.backends.<name>.dtype=bfloat16`), on the same prompts in one run.

    python bench/cpu_dtype.py                        # embedded SmolLM2, 24 prompts x 64 tokens
    python bench/cpu_dtype.py --rows 32 --tokens 128 --prompt-words 300

bfloat16 pays off only on a CPU that multiplies it in hardware (AMX or AVX512-BF16: printed);
elsewhere torch emulates it, slower than float32. Prints each dtype's completion tokens/s,
prompt tokens/s over the whole call, the ratio, and how many greedy answers are the same text
in both: the price of bf16, whose logits also change with the batch a prompt is computed in
(docs/llm.md, "Same seed, same text"), which is why `auto` keeps float32 on a CPU.
"""

from __future__ import annotations

import argparse
import time

import torch

from matrix.llm.hf import HFBackend
from matrix.llm.protocol import Chat, Sampling

TOPICS = ["rivers", "bread", "chess", "volcanoes", "bees", "trains", "jazz", "glaciers",
          "tea", "bridges", "owls", "deserts", "kites", "coral", "maps", "clocks"]  # fmt: skip


def prompts(n: int, words: int) -> list[Chat]:
    # a profile-sized context before the question, as the agents' prompts carry
    context = " ".join(TOPICS[(i * 7) % 16] for i in range(words))
    return [
        [
            {"role": "system", "content": f"Notes: {context}"},
            {"role": "user", "content": f"Write two sentences about {TOPICS[i % 16]} ({i})."},
        ]
        for i in range(n)
    ]


def native_bf16() -> dict[str, bool]:
    cpu = torch.cpu
    names = {"amx": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    return {k: bool(getattr(cpu, f, lambda: False)()) for k, f in names.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    chats = prompts(args.rows, args.prompt_words)
    sampling = Sampling(max_new_tokens=args.tokens, temperature=0.0)
    print(f"CPU: {native_bf16()}, torch threads {torch.get_num_threads()}")
    results = {}
    for dtype in ("float32", "bfloat16"):
        backend = HFBackend(args.model, dtype=dtype, device="cpu", batch_size=args.batch_size)
        backend.generate(chats[:2], Sampling(max_new_tokens=4))  # load and warm up, untimed
        t0 = time.perf_counter()
        out = backend.generate(chats, sampling)
        seconds = time.perf_counter() - t0
        done = sum(c.completion_tokens for c in out)
        prompt = sum(c.prompt_tokens for c in out)
        results[dtype] = (seconds, out)
        print(
            f"{dtype:>8}: {seconds:6.1f} s, {done / seconds:6.1f} completion tok/s, "
            f"{prompt / seconds:7.1f} prompt tok/s ({args.rows} prompts, {prompt} prompt tokens)"
        )
    (base, fp32), (fast, bf16) = results["float32"], results["bfloat16"]
    same = sum(a.text == b.text for a, b in zip(fp32, bf16, strict=True))
    print(
        f"bfloat16 / float32 speed: x{base / fast:.2f}; greedy answers identical: {same}/{len(fp32)}"
    )


if __name__ == "__main__":
    main()
