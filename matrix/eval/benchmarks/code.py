"""HumanEval and MBPP: sample solutions, execute them against the tests in the sandbox, pass@k.

Chat models usually answer with a fenced code block; `extract_code` takes the first Python block
(or the whole text). For HumanEval a completion that redefines the entry point is run after the
prompt (so the prompt's imports and helpers exist); otherwise it is appended to the prompt as a
function body. MBPP uses the full set's test split (task_ids 11-510) by default, or the sanitized
subset (`subset: sanitized`, 257 tasks in the test range), with the paper's task statement +
test-list prompt. Defaults: temperature 0.2, n_samples 1 (pass@1).
"""

from __future__ import annotations

import re
from typing import Any

from matrix.eval.benchmarks.base import Benchmark, Record, by_id
from matrix.eval.pass_at_k import mean_pass_at_k
from matrix.eval.sandbox import Limits, run_many
from matrix.eval.sandbox_walls import detect_walls

_FENCE = re.compile(r"```(?:python|py|Python)?[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    blocks = _FENCE.findall(text)
    if blocks:
        return max(blocks, key=len) if len(blocks) > 1 and "def " not in blocks[0] else blocks[0]
    return text


def humaneval_program(item: Record, completion: str) -> str:
    code = extract_code(completion)
    if re.search(rf"def\s+{re.escape(item['entry_point'])}\s*\(", code):
        body = item["prompt"] + "\n    pass\n\n" + code  # the completion's definition wins
    else:
        body = item["prompt"] + code
    return f"{body}\n\n{item['test']}\n\ncheck({item['entry_point']})\n"


def mbpp_program(item: Record, completion: str) -> str:
    code = extract_code(completion).replace("[BEGIN]", "").replace("[DONE]", "")
    return "\n".join([item["setup"], code, "", *item["tests"], ""])


class _CodeBenchmark(Benchmark):
    uses_judge = False

    def prompt(self, item: Record) -> str:
        raise NotImplementedError

    def program(self, item: Record, completion: str) -> str:
        raise NotImplementedError

    def answer(self, model: Any, items: list[Record]) -> list[Record]:
        n = int(self.opt("n_samples", 1))
        sampling = {"temperature": 0.2, "max_new_tokens": 512, **dict(self.opt("sampling", {}))}
        chats = [[{"role": "user", "content": self.prompt(it)}] for it in items for _ in range(n)]
        outs = []
        for s in range(n):  # a distinct seed per sample index so samples differ
            batch = chats[s::n] if n > 1 else chats
            outs.append(
                model.generate(batch, **{**sampling, "seed": int(sampling.get("seed", 0)) + s})
            )
        return [
            {"id": it["id"], "samples": [outs[s][k].text for s in range(n)]}
            for k, it in enumerate(items)
        ]

    def judge(self, judge: Any, items: list[Record], answers: list[Record]) -> list[Record]:
        """Execution instead of a judge LLM (`judge` is unused)."""
        ans = by_id(answers)
        limits = Limits(**dict(self.opt("limits", {})))
        programs, owners = [], []
        for it in items:
            for completion in ans[it["id"]]["samples"]:
                programs.append(self.program(it, completion))
                owners.append(it["id"])
        results = run_many(programs, limits)
        per: dict[Any, list[dict]] = {it["id"]: [] for it in items}
        for i, r in zip(owners, results, strict=True):
            per[i].append({"status": r.status, "stderr": r.stderr[-500:]})
        return [{"id": i, "results": v} for i, v in per.items()]

    def score(self, items: list[Record], answers: list[Record], judgments: list[Record]) -> dict:
        jud = by_id(judgments)
        flags = [[r["status"] == "passed" for r in jud[it["id"]]["results"]] for it in items]
        n = min(len(f) for f in flags)
        out: dict[str, Any] = {"n": len(items), "n_samples": n}
        for k in sorted({1, 10, 100} | set(self.opt("ks", []))):
            if k <= n:
                out[f"pass@{k}"] = 100 * mean_pass_at_k(flags, k)
        statuses = [r["status"] for it in items for r in jud[it["id"]]["results"]]
        out["timeouts"] = statuses.count("timeout")
        out["sandbox"] = detect_walls().as_dict()  # the walls the samples run behind here
        return out


class HumanEval(_CodeBenchmark):
    name = "humaneval"

    def load(self) -> list[Record]:
        from matrix.eval.datafiles import read_jsonl

        items = [
            {
                "id": r["task_id"],
                "prompt": r["prompt"],
                "test": r["test"],
                "entry_point": r["entry_point"],
                "canonical_solution": r["canonical_solution"],
            }
            for r in read_jsonl("humaneval/HumanEval.jsonl.gz")
        ]
        return self.limit(items)

    def prompt(self, item: Record) -> str:
        return (
            "Complete the following Python function. Reply with the full function in a "
            f"```python code block.\n\n```python\n{item['prompt']}```"
        )

    def program(self, item: Record, completion: str) -> str:
        return humaneval_program(item, completion)


class MBPP(_CodeBenchmark):
    name = "mbpp"

    def load(self) -> list[Record]:
        from matrix.eval.datafiles import read_jsonl

        if self.opt("subset", "full") == "sanitized":
            rows = read_jsonl("mbpp/sanitized-mbpp.jsonl.gz")
            items = [
                {
                    "id": r["task_id"],
                    "text": r["prompt"],
                    "tests": r["test_list"],
                    "setup": "\n".join(r["test_imports"]),
                    "reference": r["code"],
                }
                for r in rows
                if 11 <= r["task_id"] <= 510
            ]
        else:
            rows = read_jsonl("mbpp/mbpp_1-510.jsonl.gz")
            items = [
                {
                    "id": r["task_id"],
                    "text": r["text"],
                    "tests": r["test_list"],
                    "setup": r["test_setup_code"],
                    "reference": r["code"],
                }
                for r in rows
                if 11 <= r["task_id"] <= 510
            ]
        return self.limit(items)

    def prompt(self, item: Record) -> str:
        tests = "\n".join(item["tests"])
        return (
            f"You are an expert Python programmer, and here is your task: {item['text']} "
            f"Your code should pass these tests:\n\n{tests}\n\nReply with the code in a ```python block."
        )

    def program(self, item: Record, completion: str) -> str:
        return mbpp_program(item, completion)
