"""How each modulator/summarizer prompt set (`prompt_set=paper|small`) does on one simulation.

Runs the simulate stage once per prompt set with the same config otherwise (by default the
demo: 8 agents in 2 groups, 4 rounds, the embedded SmolLM2-135M-Instruct as every role) and
prints, per set:

- third-person: share of scenario summaries with no first-person word (I, me, my, we, our,
  us) outside quotation marks: a scenario is a report about people, not a post by one;
- distinct: share of summaries that are unique, and the share whose first three words no
  other summary of the run starts with (a fixed opening puts a shared prefix into every
  scenario embedding used for retrieval);
- routing parsed: share of routed items (own actions of groups with two or more members,
  and inter-group news) whose modulator answer parsed, at the first call or the retry.

A run already finished under the same runs dir is resumed, not redone.

    python bench/prompt_sets.py [--runs-dir runs/prompt_sets] [overrides ...]
    python bench/prompt_sets.py experiment=demo          # the default
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = ("paper", "small")
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”")
_FIRST_PERSON = re.compile(r"\b(I|I'm|I've|I'll|I'd|me|my|mine|we|our|us)\b")


def third_person(summary: str) -> bool:
    return not _FIRST_PERSON.search(_QUOTED.sub(" ", summary))


def figures(sim_dir: Path) -> dict:
    scenarios = [json.loads(x) for x in (sim_dir / "scenarios.jsonl").read_text().splitlines()]
    events = [json.loads(x) for x in (sim_dir / "events.jsonl").read_text().splitlines()]
    rounds = [
        json.loads(x)
        for x in (sim_dir / "metrics.jsonl").read_text().splitlines()
        if "sim/round" in x
    ]
    summaries = [s["summary"] for s in scenarios]
    openings = [" ".join(s.split()[:3]).lower() for s in summaries]
    routed = [e for e in events if e["routing"] in ("modulator", "retry", "fallback")]
    news = sum(r.get("sim/inter_group_deliveries", 0) for r in rounds)
    news_fallbacks = sum(r.get("sim/routing_fallbacks", 0) for r in rounds) - sum(
        e["routing"] == "fallback" for e in events
    )
    items = len(routed) + news
    parsed = items - sum(e["routing"] == "fallback" for e in routed) - news_fallbacks
    return {
        "scenarios": len(summaries),
        "third_person": sum(map(third_person, summaries)) / max(1, len(summaries)),
        "distinct": len(set(summaries)) / max(1, len(summaries)),
        "own_opening": sum(openings.count(o) == 1 for o in openings) / max(1, len(openings)),
        "routing_parsed": parsed / max(1, items),
        "routed_items": items,
        "example": scenarios[0] if scenarios else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs-dir", default=str(ROOT / "runs" / "prompt_sets"))
    ap.add_argument("overrides", nargs="*", default=["experiment=demo"])
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir

    from matrix.sim.run import run_simulate

    results = {}
    for name in SETS:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                "simulate",
                overrides=[
                    *args.overrides,
                    f"prompt_set={name}",
                    f"paths.runs_dir={args.runs_dir}",
                    f"run.name=ps_{name}",
                    "logger=none",
                ],
            )
        run_simulate(cfg)
        results[name] = figures(Path(args.runs_dir) / f"ps_{name}" / "simulate")

    print(f"prompt sets on: {' '.join(args.overrides)}")
    print(
        f"{'set':<7} {'scenarios':>9} {'third_person':>13} {'distinct':>9} "
        f"{'own_opening':>12} {'routing_parsed':>15}"
    )
    for name, f in results.items():
        print(
            f"{name:<7} {f['scenarios']:>9} {f['third_person']:>13.0%} {f['distinct']:>9.0%} "
            f"{f['own_opening']:>12.0%} {f['routing_parsed']:>9.0%} of {f['routed_items']}"
        )
    for name, f in results.items():
        if f["example"]:
            s = f["example"]
            print(f"\n[{name}] {s['id']} ({', '.join(s['participant_names'])}):\n{s['summary']}")


if __name__ == "__main__":
    main()
