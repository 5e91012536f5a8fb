"""A W&B Report of compared runs (a sweep): `python -m matrix.compare <sweep dir> --wandb-report`.

The report shows the stage runs of the sweep's W&B group (the sweep id, `run.sweep_id`;
matrix.core.wandb_run.wandb_group) and nothing else: training loss per arm (the train runs'
`train/loss` history), the benchmark scores (bar plots of the evaluate runs' summary
metrics; W&B bar plots draw no per-run interval, so the 95% CIs are in a table next to them),
the generated data's statistics (bar plots of the generate runs' `counts/*` and `stats/*`
summaries, and the table) and a run comparer (the arms' config differences).

`build_report` returns the Report object from the compared arms alone (no server);
`save_report` writes its spec as JSON into the report folder and, with an online W&B server
(WANDB_MODE=online and a login), saves it there. Both need the `wandb-workspaces` package
(the `report` extra).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matrix.analysis.arms import Arm, data_stats, eval_stats
from matrix.common.io import write_json
from matrix.common.markdown import markdown_table
from matrix.core.wandb_run import wandb_group

log = logging.getLogger("matrix.compare")

PACKAGE = "wandb-workspaces"
EXTRA = "report"
SPEC_FILE = "wandb_report.json"
# Per-benchmark counts, not scores: left out of the bar plots (they stay in the table).
_NOT_SCORES = ("/n", "_n", "judge_failures", "avg_length", "avg_words", "_reference")


def reports_api() -> Any:
    """wandb_workspaces.reports.v2, or an ImportError that says what to install."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as e:
        raise ImportError(
            f"--wandb-report needs the {PACKAGE} package: pip install -e '.[{EXTRA}]' "
            f"(the `{EXTRA}` extra of matrix) or pip install {PACKAGE}"
        ) from e
    return wr


@dataclass(frozen=True)
class Target:
    """Where the arms' stage runs are in W&B: their group(s), project and entity."""

    groups: tuple[str, ...]
    project: str = "matrix"
    entity: str = ""
    mode: str = "offline"


def report_target(arms: list[Arm]) -> Target:
    """The W&B group, project and entity the arms' stages logged to (their manifests' config)."""
    configs = [m.get("config") or {} for a in arms for m in a.manifests.values()]
    wcfgs = [(c.get("logger") or {}).get("wandb") or {} for c in configs]
    first = next((w for w in wcfgs if w), {})
    return Target(
        groups=tuple(sorted({wandb_group(c) for c in configs})) or ("default",),
        project=str(first.get("project") or "matrix"),
        entity=str(first.get("entity") or ""),
        mode=str(first.get("mode") or "offline"),
    )


def run_filter(groups: tuple[str, ...], job_type: str | None = None) -> str:
    """A W&B runs filter: the runs of `groups` (of one job type)."""
    group = (
        f"Metric('Group') == {groups[0]!r}"
        if len(groups) == 1
        else f"Metric('Group') in {list(groups)!r}"
    )
    return group if job_type is None else f"{group} and Metric('JobType') == {job_type!r}"


def _score_metrics(arms: list[Arm]) -> list[str]:
    """The evaluate summary keys to plot: metrics with a CI (the headline scores); without
    any, every numeric metric but per-benchmark counts."""
    stats = [eval_stats(a) for a in arms]
    keys = sorted({k for s in stats for k in s})
    with_ci = [k for k in keys if any(isinstance(s.get(k), tuple) for s in stats)]
    return with_ci or [k for k in keys if not any(x in k for x in _NOT_SCORES)]


def _data_metrics(arms: list[Arm]) -> list[str]:
    """The generate summary keys of the data table's rows (`rows/k` -> `counts/k`,
    `<kind>/<metric>` -> `stats/<kind>/<metric>`; StageRun.finish logs both)."""
    keys = sorted({k for a in arms for k, v in data_stats(a).items() if isinstance(v, int | float)})
    return [f"counts/{k[5:]}" if k.startswith("rows/") else f"stats/{k}" for k in keys]


def _table(wr: Any, title: str, rows: list[list[str]], header: list[str]) -> list[Any]:
    return [wr.H3(title), wr.MarkdownBlock(markdown_table(header, rows) if rows else "No data.")]


def build_report(arms: list[Arm], result: dict[str, Any], target: Target | None = None) -> Any:
    """The W&B Report of the compared arms (`result`: matrix.analysis.compare's tables); pure:
    nothing is sent anywhere."""
    wr = reports_api()
    target = target or report_target(arms)
    tables, header = result["tables"], result["tables"]["header"]

    def grid(job_type: str, panels: list[Any]) -> Any:
        runset = wr.Runset(
            project=target.project,
            name=f"{job_type} runs",
            filters=run_filter(target.groups, job_type),
        )
        return wr.PanelGrid(runsets=[runset], panels=panels)

    scores = [wr.BarPlot(title=m, metrics=[m], orientation="v") for m in _score_metrics(arms)]
    data = [wr.BarPlot(title=m, metrics=[m], orientation="v") for m in _data_metrics(arms)]
    groups = ", ".join(target.groups)
    blocks = [
        wr.P(
            f"{len(arms)} arms ({', '.join(a.name for a in arms)}): the stage runs of W&B "
            f"group {groups}, one run per stage and arm (job type = stage)."
        ),
        wr.H2("Training loss per arm"),
        grid("train", [wr.LinePlot(title="train/loss", x="Step", y=["train/loss"])]),
        *_table(wr, "Training", tables["training"], header),
        wr.H2("Benchmarks"),
        grid("evaluate", [*scores, wr.RunComparer(diff_only="split")]),
        *_table(wr, "Scores: value [95% CI]", tables["evaluation"], header),
        wr.H2("Generated data"),
        grid("generate", data),
        *_table(wr, "Data statistics", tables["data"], header),
    ]
    return wr.Report(
        project=target.project,
        entity=target.entity,
        title=f"MATRIX sweep {groups}"[:128],
        description=f"python -m matrix.compare over {len(arms)} run dirs",
        blocks=blocks,
    )


def report_spec(report: Any) -> dict[str, Any]:
    """The report as the JSON view spec that `Report.save()` uploads."""
    return report._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)


def save_report(report: Any, out: Path, mode: str = "offline") -> str:
    """Write the report's spec to `out`/wandb_report.json; save it to W&B when `mode` (or
    WANDB_MODE) is online. Returns one line for the console."""
    spec = out / SPEC_FILE
    write_json(spec, report_spec(report))
    mode = os.environ.get("WANDB_MODE") or mode
    if mode != "online":
        return (
            f"W&B Report not saved: no online W&B server (W&B mode {mode}); its spec is in "
            f"{spec}. Sync the runs (`wandb sync`), then rerun with WANDB_MODE=online."
        )
    try:
        if not report.entity:
            import wandb

            report.entity = wandb.Api().default_entity or ""
        report.save()
        return f"W&B Report: {report.url}"
    except Exception as e:  # no login, no network, a server error: the spec is kept
        return f"W&B Report not saved ({type(e).__name__}: {e}); its spec is in {spec}"


def publish_report(arms: list[Arm], result: dict[str, Any], out: Path) -> str:
    target = report_target(arms)
    return save_report(build_report(arms, result, target), out, target.mode)
