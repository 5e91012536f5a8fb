"""The paper's analyses of generated data, for one generate run or several side by side:

- Fig. 5: the judge's quality and difficulty of the instructions (matrix.analysis.instruction_judge)
- Fig. 6: the similarity of the simulated agents' profiles (matrix.analysis.profile_similarity),
  from the simulate run each generate run came from; skipped, with a note, where it is missing
- Fig. 7: task categories, root verbs and their direct-object nouns (the judge's tags)
- beside them: instruction length, distinct-1/2 and embedding spread (matrix.gen.stats)

Every figure's data is written next to its PNG, one line per row (a generated row's id, or a
pair of agent ids), so a bar can be traced to the rows behind it. The judge's answers are kept
in `judge/<run>.jsonl`: a rerun only judges rows it has no answer for.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matrix.analysis import analysis_figures as figures
from matrix.analysis.analysis_report import write_report
from matrix.analysis.gen_runs import GenRun, load_gen_runs
from matrix.analysis.instruction_judge import JudgeResult, judge_rows
from matrix.analysis.profile_similarity import ProfileSimilarity, encoder_model, profile_similarity
from matrix.common.io import write_json
from matrix.common.progress import progress
from matrix.gen.stats import distinct_n, embedding_spread

log = logging.getLogger("matrix.analyze")

FIG5, FIG6, FIG7, LENGTHS = (
    "fig5_quality_difficulty",
    "fig6_profile_similarity",
    "fig7_categories_verbs",
    "instruction_lengths",
)


@dataclass
class RunAnalysis:
    run: GenRun
    stats: dict[str, Any] = field(default_factory=dict)
    judged: JudgeResult | None = None
    similarity: ProfileSimilarity | None = None
    notes: list[str] = field(default_factory=list)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def default_out(gen_dir: Path) -> Path:
    """`analysis/` in the run folder, beside its `generate/` (`analysis-<name>/` for a generate
    folder of another name, such as a pipeline's `generate_sft/`): never inside the generate
    folder, which later stages may read as a folder of rows and hash as their input."""
    suffix = "" if gen_dir.name == "generate" else f"-{gen_dir.name}"
    return gen_dir.parent / f"analysis{suffix}"


def cheap_stats(run: GenRun, encoder: Any) -> dict[str, Any]:
    texts = [r.instruction for r in run.rows]
    words = [len(t.split()) for t in texts]
    vecs = np.asarray(encoder.encode(texts), dtype=np.float32)
    return {
        "rows": len(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "embedding_spread": embedding_spread(vecs),
        "mean_words": round(float(np.mean(words)), 1),
        "median_words": float(np.median(words)),
        "max_words": int(max(words)),
    }


def _judge(item: RunAnalysis, judge: Any, out: Path, limit: int | None, batch: int, **sampling):
    rows = item.run.rows[:limit] if limit else item.run.rows
    with progress("analyze") as bar:
        task = bar.add_task(f"judging {item.run.label}", total=len(rows))
        item.judged = judge_rows(
            rows,
            judge,
            out / "judge" / f"{_slug(item.run.label)}.jsonl",
            batch,
            on_batch=lambda n: bar.advance(task, n),
            **sampling,
        )
    ok = item.judged.tags
    item.stats |= {
        "judged": len(rows),
        "judge_failures": len(item.judged.failed),
        "mean_quality": round(float(np.mean([t.quality for t in ok.values()])), 2) if ok else None,
        "mean_difficulty": round(float(np.mean([t.difficulty for t in ok.values()])), 2)
        if ok
        else None,
    }
    if len(rows) < len(item.run.rows):
        item.notes.append(f"judged the first {len(rows)} of {len(item.run.rows)} rows (--limit)")


def _similarity(item: RunAnalysis, encoder_for: Any) -> None:
    sim_dir = item.run.sim_dir
    if sim_dir is None:
        item.notes.append(f"Fig. 6 skipped: no simulate run found ({item.run.sim_note})")
        return
    item.similarity = profile_similarity(sim_dir, encoder_for(encoder_model(sim_dir)))
    item.stats |= {f"profiles/{k}": v for k, v in item.similarity.summary().items()}


def _counts(item: RunAnalysis, tag: str, top: int | None = None) -> dict[str, int]:
    values = Counter(getattr(t, tag) for t in item.judged.tags.values())
    values.pop("", None)
    return dict(values.most_common(top))


def _fig5(items: list[RunAnalysis], out: Path) -> dict[str, Path]:
    judged = [i for i in items if i.judged is not None and i.judged.tags]
    if not judged:
        return {}
    rows = [
        [i.run.label, r.id, r.set, t.quality, t.difficulty]
        if (t := i.judged.tags.get(r.id))
        else [i.run.label, r.id, r.set, "", ""]
        for i in items
        if i.judged is not None
        for r in i.run.rows
        if r.id in i.judged.tags or r.id in i.judged.failed
    ]
    q = {i.run.label: [t.quality for t in i.judged.tags.values()] for i in judged}
    d = {i.run.label: [t.difficulty for t in i.judged.tags.values()] for i in judged}
    return {
        "png": figures.quality_difficulty(q, d, out / f"{FIG5}.png"),
        "csv": _write_csv(
            out / f"{FIG5}.csv", ["run", "row_id", "set", "quality", "difficulty"], rows
        ),
    }


def _fig6(items: list[RunAnalysis], out: Path) -> dict[str, Path]:
    with_sim = [i for i in items if i.similarity is not None and len(i.similarity.agent_ids) > 1]
    if not with_sim:
        return {}
    rows, hists = [], {}
    for i in with_sim:
        pairs = i.similarity.pairs()
        rows += [[i.run.label, str(i.run.sim_dir), a, b, c, int(s)] for a, b, c, s in pairs]
        hists[i.run.label] = ([c for *_, c, s in pairs if s], [c for *_, c, s in pairs if not s])
    first = with_sim[0].similarity
    order = np.argsort(first.groups, kind="stable")
    header = ["run", "simulate_dir", "agent_a", "agent_b", "cosine", "same_group"]
    return {
        "png": figures.profile_similarity(
            hists, first.matrix[np.ix_(order, order)], out / f"{FIG6}.png"
        ),
        "csv": _write_csv(out / f"{FIG6}.csv", header, rows),
    }


def _fig7(items: list[RunAnalysis], out: Path) -> dict[str, Path]:
    judged = [i for i in items if i.judged is not None and i.judged.tags]
    if not judged:
        return {}
    rows = [
        [i.run.label, r.id, t.category, t.verb, t.noun]
        for i in judged
        for r in i.run.rows
        if (t := i.judged.tags.get(r.id))
    ]
    vn = {i.run.label: [(t.verb, t.noun) for t in i.judged.tags.values()] for i in judged}
    cats = {i.run.label: [t.category for t in i.judged.tags.values()] for i in judged}
    return {
        "png": figures.verbs_and_categories(vn, cats, out / f"{FIG7}.png"),
        "csv": _write_csv(out / f"{FIG7}.csv", ["run", "row_id", "category", "verb", "noun"], rows),
    }


def _lengths(items: list[RunAnalysis], out: Path) -> dict[str, Path]:
    rows = [
        [i.run.label, r.id, len(r.instruction.split()), len(r.instruction)]
        for i in items
        for r in i.run.rows
    ]
    words = {i.run.label: [len(r.instruction.split()) for r in i.run.rows] for i in items}
    return {
        "png": figures.lengths(words, out / f"{LENGTHS}.png"),
        "csv": _write_csv(out / f"{LENGTHS}.csv", ["run", "row_id", "words", "chars"], rows),
    }


def analyze(
    paths: list[Path],
    out: Path | None = None,
    *,
    judge: Any = None,
    encoder: Any = None,
    encoder_for: Any = None,
    limit: int | None = None,
    batch_size: int = 64,
    judge_ledger: Callable[[], dict[str, Any]] | None = None,
    **sampling: Any,
) -> dict[str, Any]:
    """Analyse generate runs into `out` (default: `default_out` of the first). `judge` is a role
    LLM (None skips Figs. 5 and 7); `encoder` embeds instructions, `encoder_for(model name)`
    the profiles (default: `encoder` for every model); `judge_ledger()` the judge's calls and
    tokens, recorded in analysis.json."""
    runs = load_gen_runs([Path(p) for p in paths])
    out = Path(out) if out is not None else default_out(runs[0].dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder_for = encoder_for or (lambda _model: encoder)
    items = [RunAnalysis(r) for r in runs]
    for item in items:
        item.stats = cheap_stats(item.run, encoder)
        if judge is not None:
            _judge(item, judge, out, limit, batch_size, **sampling)
        _similarity(item, encoder_for)
    files = {FIG5: _fig5(items, out), FIG6: _fig6(items, out), FIG7: _fig7(items, out)}
    files[LENGTHS] = _lengths(items, out)
    notes = [f"{i.run.label}: {n}" for i in items for n in i.notes]
    if judge is None:
        notes.append("Figs. 5 and 7 skipped: no judge (--no-judge)")
    result = {
        "runs": {i.run.label: str(i.run.dir) for i in items},
        "simulate_runs": {
            i.run.label: str(i.run.sim_dir) if i.run.sim_dir else None for i in items
        },
        "stats": {i.run.label: i.stats for i in items},
        "files": {k: {kind: p.name for kind, p in v.items()} for k, v in files.items() if v},
        "judge": str(getattr(judge, "name", "")) if judge is not None else None,
        "judge_failures": {i.run.label: i.judged.failed for i in items if i.judged is not None},
        "categories": {i.run.label: _counts(i, "category") for i in items if i.judged},
        "top_verbs": {i.run.label: _counts(i, "verb", 15) for i in items if i.judged},
        "llm": judge_ledger() if judge_ledger is not None else None,
        "report": str(out / "report.md"),
        "notes": notes,
    }
    write_json(out / "analysis.json", result)
    write_report(out / "report.md", result)
    for n in notes:
        log.warning("%s", n)
    log.info("analyze: %d run(s) -> %s", len(items), out / "report.md")
    return result
