"""Side-by-side report of finished runs: data stats, training curves, evaluation scores with
CIs and a lineage view (nearest training rows of some answers).

    python -m matrix.compare runs/comm_ablation_tiny            # every run below it
    python -m matrix.compare runs/a runs/b --out reports/a_vs_b
    python -m matrix.compare runs/multirun/pipeline/<time>       # a sweep dir (its arms.txt)

Writes comparison.md, comparison.json and PNGs into --out (default: the first path), and logs
the same tables to a W&B run (offline unless WANDB_MODE=online) in the arms' W&B group.
`--wandb-report` also builds a W&B Report of the arms' stage runs (matrix.analysis.wandb_report):
saved to W&B when online, its spec written to wandb_report.json either way.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matrix.analysis.arms import Arm, data_stats, eval_stats, load_arms, sim_stats, train_stats
from matrix.analysis.lineage import AnswerLineage, answer_lineage
from matrix.analysis.plots import plot_data_diversity, plot_eval_scores, plot_training_curves
from matrix.common.io import write_json
from matrix.common.markdown import markdown_table

log = logging.getLogger("matrix.compare")


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return f"{fmt(v[0])} [{fmt(v[1])}, {fmt(v[2])}]"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def side_by_side(arms: list[Arm], values: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Rows of [metric, arm 1, arm 2, ...]; a metric missing in an arm shows as '-'."""
    metrics = sorted({m for v in values.values() for m in v})
    return [[m] + [fmt(values[a.name].get(m)) for a in arms] for m in metrics]


def _short(text: str, n: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def lineage_section(lineage: dict[str, list[AnswerLineage]]) -> str:
    parts = []
    for arm, items in lineage.items():
        for a in items:
            parts.append(f"**{arm}** · {a.benchmark} item `{a.item_id}`: {_short(a.answer)}\n")
            rows = [
                [
                    n.row_id,
                    f"{n.similarity:.3f}",
                    _short(n.instruction),
                    ", ".join(map(str, n.scenario_ids)) or "-",
                    ", ".join(map(str, n.agent_ids)) or "-",
                ]
                for n in a.neighbours
            ]
            parts.append(
                markdown_table(
                    ["training row", "cosine", "instruction", "scenarios", "agents"], rows
                )
                + "\n"
            )
    return "\n".join(parts) if parts else "No evaluation answers or training rows to match.\n"


def build_tables(arms: list[Arm]) -> dict[str, list[list[str]]]:
    return {
        "simulation": side_by_side(arms, {a.name: sim_stats(a) for a in arms}),
        "data": side_by_side(arms, {a.name: data_stats(a) for a in arms}),
        "training": side_by_side(arms, {a.name: train_stats(a) for a in arms}),
        "evaluation": side_by_side(arms, {a.name: eval_stats(a) for a in arms}),
    }


def write_report(
    arms: list[Arm], out: Path, lineage: dict[str, list[AnswerLineage]]
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    tables = build_tables(arms)
    plots = {
        "training_loss": plot_training_curves(arms, out / "training_loss.png"),
        "eval_scores": plot_eval_scores(arms, out / "eval_scores.png"),
        "data_diversity": plot_data_diversity(arms, out / "data_diversity.png"),
    }
    header = ["metric"] + [a.name for a in arms]
    experiments = sorted({a.experiment for a in arms if a.experiment})
    md = [f"# Comparison: {', '.join(experiments) or 'runs'}\n"]
    md.append(markdown_table(["arm", "run dir"], [[a.name, str(a.dir)] for a in arms]) + "\n")
    titles = {
        "simulation": "Simulation (simulate manifest: counts)",
        "data": "Generated data (generate manifest: counts, diversity, coverage)",
        "training": "Training (train/metrics.jsonl, train manifest)",
        "evaluation": "Evaluation (evaluate/scores.json; value [95% CI])",
    }
    for key, title in titles.items():
        md.append(f"## {title}\n")
        md.append((markdown_table(header, tables[key]) if tables[key] else "No data.") + "\n")
    md.append("## Plots\n")
    md += [f"![{k}]({p.name})\n" for k, p in plots.items() if p is not None]
    md.append("## Lineage: nearest training rows of some evaluation answers\n")
    md.append(lineage_section(lineage))
    (out / "comparison.md").write_text("\n".join(md), encoding="utf-8")
    result = {
        "arms": {a.name: str(a.dir) for a in arms},
        "tables": {"header": header, **tables},
        "plots": {k: str(p) for k, p in plots.items() if p is not None},
        "lineage": {k: [asdict(x) for x in v] for k, v in lineage.items()},
    }
    write_json(out / "comparison.json", result)
    return result


def log_to_wandb(arms: list[Arm], out: Path, result: dict[str, Any]) -> None:
    """The same tables and plots as one W&B run, in the group of the arms' stage runs (a
    sweep's id), or "comparison" when the arms are in several groups."""
    import wandb

    from matrix.analysis.wandb_report import report_target

    mode = os.environ.get("WANDB_MODE", "offline")
    experiments = sorted({a.experiment for a in arms if a.experiment})
    target = report_target(arms)
    group = target.groups[0] if len(target.groups) == 1 else "comparison"
    run = wandb.init(
        project=target.project,
        entity=target.entity or None,
        group=group,
        job_type="compare",
        name=f"{group}/compare",
        tags=["compare", *(f"experiment:{e}" for e in experiments)],
        dir=str(out),
        mode=mode,
        config={"arms": result["arms"]},
        reinit="create_new",
        settings=wandb.Settings(silent=True, console="off"),
    )
    header = result["tables"]["header"]
    payload: dict[str, Any] = {
        f"compare/{k}": wandb.Table(columns=header, data=result["tables"][k])
        for k in ("simulation", "data", "training", "evaluation")
    }
    payload |= {f"compare/{k}": wandb.Image(p) for k, p in result["plots"].items()}
    run.log(payload)
    run.finish()


def compare(
    paths: list[Path],
    out: Path | None = None,
    lineage_answers: int = 3,
    lineage_k: int = 3,
    encoder: Any = None,
    wandb_log: bool = True,
    wandb_report: bool = False,
) -> dict[str, Any]:
    """`wandb_report`: also the W&B Report (its outcome, one line, in result["wandb_report"])."""
    if wandb_report:
        from matrix.analysis.wandb_report import reports_api

        reports_api()  # a missing package stops here, before any work
    arms = load_arms(paths)
    out = out or paths[0]
    lineage: dict[str, list[AnswerLineage]] = {}
    if lineage_answers > 0:
        if encoder is None:
            from matrix.llm.embeddings import Encoder

            encoder = Encoder()
        lineage = {a.name: answer_lineage(a, encoder, lineage_answers, lineage_k) for a in arms}
    result = write_report(arms, out, lineage)
    if wandb_log:
        log_to_wandb(arms, out, result)
    if wandb_report:
        from matrix.analysis.wandb_report import publish_report

        result["wandb_report"] = publish_report(arms, result, out)
    log.info("compare: %d arms -> %s", len(arms), out / "comparison.md")
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m matrix.compare", description=__doc__.split("\n")[0])
    p.add_argument(
        "paths", nargs="+", type=Path, help="run dirs, or folders / sweep dirs holding them"
    )
    p.add_argument("--out", type=Path, default=None, help="report folder (default: the first path)")
    p.add_argument("--lineage-answers", type=int, default=3, help="answers per benchmark (0: none)")
    p.add_argument("--lineage-k", type=int, default=3, help="nearest training rows per answer")
    p.add_argument("--no-wandb", action="store_true", help="skip the W&B run")
    p.add_argument(
        "--wandb-report",
        action="store_true",
        help="also a W&B Report of the arms' stage runs (needs wandb-workspaces); saved when "
        "W&B is online, its spec written to wandb_report.json",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = compare(
            args.paths,
            args.out,
            args.lineage_answers,
            args.lineage_k,
            wandb_log=not args.no_wandb,
            wandb_report=args.wandb_report,
        )
    except ImportError as e:
        if not args.wandb_report or "wandb-workspaces" not in str(e):
            raise
        p.exit(2, f"error: {e}\n")
    print(f"wrote {(args.out or args.paths[0]) / 'comparison.md'}")
    if "wandb_report" in result:
        print(result["wandb_report"])


if __name__ == "__main__":
    main()
