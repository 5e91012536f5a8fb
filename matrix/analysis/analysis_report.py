"""report.md of `python -m matrix.analyze`: one column per run in every table, each figure
with the file of per-row values it was drawn from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matrix.analysis.instruction_judge import CATEGORIES, DIFFICULTY, PROMPT_VERSION, QUALITY
from matrix.common.io import atomic_write_text
from matrix.common.markdown import markdown_table

SUMMARY = [
    ("rows", "rows"),
    ("judged", "rows judged"),
    ("judge_failures", "judge answers that did not parse"),
    ("mean_quality", "mean quality (1-5)"),
    ("mean_difficulty", "mean difficulty (1-5)"),
    ("distinct_1", "distinct-1 (instructions)"),
    ("distinct_2", "distinct-2 (instructions)"),
    ("embedding_spread", "embedding spread (mean pairwise cosine distance)"),
    ("mean_words", "mean words per instruction"),
    ("median_words", "median words per instruction"),
    ("profiles/agents", "agents (simulate run)"),
    ("profiles/mean_cosine_all", "mean profile cosine, all pairs"),
    ("profiles/mean_cosine_same_group", "mean profile cosine, same group"),
    ("profiles/mean_cosine_other_group", "mean profile cosine, different groups"),
]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _figure(result: dict[str, Any], key: str, title: str, text: str) -> list[str]:
    files = result["files"].get(key)
    if not files:
        return [f"## {title}\n", "Not drawn: see the notes below.\n"]
    return [
        f"## {title}\n",
        text + "\n",
        f"![{key}]({files['png']})\n",
        f"Per-row values: [{files['csv']}]({files['csv']}).\n",
    ]


def _share_table(result: dict[str, Any], key: str, names: list[str]) -> str:
    labels = list(result[key])
    rows = []
    for name in names:
        cells = []
        for label in labels:
            counts = result[key][label]
            total = sum(counts.values()) if key == "categories" else None
            c = counts.get(name, 0)
            cells.append(f"{c} ({100 * c / total:.0f}%)" if total else str(c))
        if any(c not in ("0", "0 (0%)") for c in cells):
            rows.append([name, *cells])
    return markdown_table([key.replace("_", " "), *labels], rows)


def _figures(result: dict[str, Any]) -> list[str]:
    md: list[str] = []
    md += _figure(
        result,
        "fig5_quality_difficulty",
        "Fig. 5: instruction quality and difficulty",
        f"The judge's tags, as shares of the instructions it tagged: quality "
        f"{', '.join(f'{i} {w}' for i, w in enumerate(QUALITY, 1))}; difficulty "
        f"{', '.join(f'{i} {w}' for i, w in enumerate(DIFFICULTY, 1))}.",
    )
    md += _figure(
        result,
        "fig6_profile_similarity",
        "Fig. 6: inter-agent profile similarity",
        "Cosine similarity of the sentence embeddings of every two agents' profiles in the "
        "simulate run the rows came from, for pairs in the same group (one modulator) and in "
        "different groups; the heatmap orders the first run's agents by group.",
    )
    md += _figure(
        result,
        "fig7_categories_verbs",
        "Fig. 7: task categories, root verbs and their objects",
        "The judge's task category of each instruction, and its root verb (inner ring, the "
        "most common) with that verb's most common direct-object nouns (outer ring).",
    )
    if result.get("categories"):
        md.append(_share_table(result, "categories", list(CATEGORIES)) + "\n")
        verbs = sorted({v for c in result["top_verbs"].values() for v in c})
        md.append(_share_table(result, "top_verbs", verbs) + "\n")
    md += _figure(
        result,
        "instruction_lengths",
        "Instruction length",
        "Words per instruction (whitespace-separated), one histogram per run.",
    )
    return md


def write_report(path: Path, result: dict[str, Any]) -> None:
    labels = list(result["runs"])
    stats = result["stats"]
    md = [f"# Data analysis: {', '.join(labels)}\n"]
    md.append(
        markdown_table(
            ["run", "generate run", "simulate run"],
            [[lb, result["runs"][lb], result["simulate_runs"][lb] or "-"] for lb in labels],
        )
        + "\n"
    )
    summary = [
        [title, *(_fmt(stats[lb].get(k)) for lb in labels)]
        for k, title in SUMMARY
        if any(k in stats[lb] for lb in labels)
    ]
    md += ["## Summary\n", markdown_table(["metric", *labels], summary) + "\n"]
    md += _figures(result)
    md.append("## How these were made\n")
    md.append(
        f"- judge: `{result['judge'] or 'none'}` (llm.roles.judge), prompt version "
        f"`{PROMPT_VERSION}` (matrix/analysis/instruction_judge.py); its answers are in "
        "`judge/<run>.jsonl`, with the raw text of each\n"
        "- distinct-n: unique word n-grams / all n-grams over the instructions; embedding "
        "spread: mean pairwise cosine distance of the instructions' sentence embeddings "
        "(matrix/gen/stats.py)\n"
    )
    failures = {lb: ids for lb, ids in (result.get("judge_failures") or {}).items() if ids}
    notes = list(result["notes"]) + [
        f"{lb}: the judge's answer did not parse for {len(ids)} row(s) ({', '.join(ids[:8])}"
        f"{', ...' if len(ids) > 8 else ''}); they are counted above, not scored"
        for lb, ids in failures.items()
    ]
    md += ["## Notes\n", "\n".join(f"- {n}" for n in notes) if notes else "None.", ""]
    atomic_write_text(path, "\n".join(md))
