"""LLM load of the simulation at the paper's scale: calls, tokens and batch sizes per round
for 1,000 agents in 200 groups.

The LLM here is a FAST DETERMINISTIC DOUBLE (it answers from a few canned texts and counts
tokens with the real SmolLM2 tokenizer): this benchmark measures how the simulator batches
and how many tokens it sends, not model speed. Everything else is the real stage: the
shipped 1,000 profiles, real embeddings, constrained K-means, prompts from conf/.

    python bench/simulate.py [--rounds 3] [--agents 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class CountingDouble:
    """Deterministic stand-in LLM: canned answers, real token counts."""

    name = "deterministic-double"

    def __init__(self):
        from transformers import AutoTokenizer

        from matrix.llm.embedded import smollm2_hf_dir

        self.tok = AutoTokenizer.from_pretrained(smollm2_hf_dir())

    def generate(self, chats, sampling):
        from matrix.llm.chat import render
        from matrix.llm.protocol import Completion

        out = []
        for chat in chats:
            prompt = render(self.tok, chat, add_generation_prompt=True)
            text = chat[-1]["content"]
            if "Which other members" in text or "Which other communities" in text:
                reply = "[0, 1], they share this interest."
            elif "Answer yes or no" in text:
                reply = "No."
            else:
                reply = "I post an update about my project and ask my friends for advice on the next step."
            n_prompt = len(self.tok(prompt, add_special_tokens=False)["input_ids"])
            n_out = min(
                sampling.max_new_tokens,
                len(self.tok(reply, add_special_tokens=False)["input_ids"]) + 1,
            )
            out.append(Completion(reply, n_prompt, n_out, "stop", self.name))
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--agents", type=int, default=1000)
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir

    from matrix.llm.roles import Roles
    from matrix.sim.run import run_simulate

    with tempfile.TemporaryDirectory() as tmp:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                "simulate",
                overrides=[
                    f"paths.runs_dir={tmp}",
                    "logger=none",
                    f"population.size={args.agents}",
                    f"simulation.max_rounds={args.rounds}",
                    "run.name=bench",
                ],
            )
        # No call cache: every request reaches the double, so tokens are per round.
        roles = Roles(cfg.llm, backends={"smollm2": CountingDouble()}, cache=False)
        t0 = time.perf_counter()
        counts = run_simulate(cfg, roles=roles)
        wall = time.perf_counter() - t0
        rows = [
            json.loads(x)
            for x in (Path(tmp) / "bench/simulate/metrics.jsonl").read_text().splitlines()
        ]
    print("simulate bench (LLM = deterministic double; token counts from the SmolLM2 tokenizer)")
    print(
        f"agents={counts['agents']} groups={counts['groups']} rounds={counts['rounds']} "
        f"events={counts['events']} scenarios={counts['scenarios']} wall={wall:.1f}s (incl. setup)"
    )
    print(
        f"{'round':>5} {'requests':>9} {'calls':>7} {'prompt_tok':>11} {'compl_tok':>10} {'max_batch':>10} {'observations':>13}"
    )
    for r in rows:
        if "sim/round" not in r:
            continue
        print(
            f"{r['sim/round']:>5} {r['sim/llm_requests']:>9} {r['sim/llm_calls']:>7} {r['sim/prompt_tokens']:>11} "
            f"{r['sim/completion_tokens']:>10} {r['sim/max_batch']:>10} {r['sim/observations']:>13}"
        )


if __name__ == "__main__":
    main()
