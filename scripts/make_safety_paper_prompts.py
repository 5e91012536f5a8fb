"""Writes matrix/eval/data/safety_paper/prompts.jsonl: the 100 harmful prompts of eval=safety's
`protocol: paper`, a seeded sample of the bundled AdvBench behaviours and XSTest unsafe prompts.

The MATRIX paper draws its 100 prompts from Safe-RLHF and AdvBench without listing them; the
PKU-SafeRLHF prompts are not bundled (Hugging Face only), so XSTest's 200 unsafe prompts
(short harmful questions in a user's voice, as Safe-RLHF's are) stand in for them. SOURCE.md
beside the output says the same. Rerun to check: the output is a pure function of the seed.

    python scripts/make_safety_paper_prompts.py [--seed 0] [--per-source 50]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from matrix.eval.datafiles import DATA_DIR, read_csv

OUT = DATA_DIR / "safety_paper" / "prompts.jsonl"


def build(seed: int = 0, per_source: int = 50) -> list[dict]:
    rng = np.random.default_rng(seed)
    adv = read_csv("advbench/harmful_behaviors.csv")
    xs = [r for r in read_csv("xstest/xstest_prompts.csv") if r["label"] == "unsafe"]
    rows = []
    for k in sorted(rng.choice(len(adv), per_source, replace=False).tolist()):
        rows.append({"source": "advbench", "upstream": f"row {k}", "prompt": adv[k]["goal"]})
    for k in sorted(rng.choice(len(xs), per_source, replace=False).tolist()):
        r = xs[k]
        rows.append({"source": "xstest_unsafe", "upstream": f"id {r['id']}", "prompt": r["prompt"]})
    return [{"id": f"safety-{i}", **r} for i, r in enumerate(rows)]


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-source", type=int, default=50)
    a = ap.parse_args()
    OUT.write_text(render(build(a.seed, a.per_source)), encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
