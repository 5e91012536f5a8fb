"""The evaluate stage: answer each benchmark with the model under test, judge, score, report.

    eval:
      model: {checkpoint: path/to/folder} | {role: responder}   # model under test
      sampling: {max_new_tokens: 1024, temperature: 0.0}          # its decoding defaults
      benchmarks: {alpaca_eval2: {limit: 20}, ...}                 # from conf/eval/*.yaml
      chunk_size: 64                                               # rows per cached batch
      compare: null | [dirA, dirB]                                 # side-by-side instead

The judge is the `judge` role of `llm`. Answers and judgments go to
<stage dir>/<benchmark>/{answers,judgments}.jsonl keyed by item id; a rerun skips ids already
present, so an interrupted evaluation resumes where it stopped without duplicates.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress

from matrix.common.io import JsonlLog, atomic_write_text, read_json, write_json
from matrix.common.progress import progress
from matrix.common.validation import ConfigProblems
from matrix.core.config_check import check_stage
from matrix.core.model_card import record_eval_results
from matrix.core.shard import Shard
from matrix.core.stage import open_stage
from matrix.eval.benchmarks import benchmark, benchmark_class
from matrix.eval.benchmarks.base import Benchmark, Record
from matrix.eval.report import (
    compare,
    headline_scores,
    plot_scores,
    plot_winrate_vs_length,
    write_report,
)
from matrix.eval.settings import model_role
from matrix.llm.protocol import Sampling
from matrix.llm.role_llm import RoleLLM
from matrix.llm.roles import Roles

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> ConfigProblems:
    """What needs more than the typed values (matrix.eval.settings, checked first): the
    folders and files named, each benchmark's own checks; all problems at once."""
    p = ConfigProblems()
    ev = cfg.eval
    if ev.get("compare"):
        for d in ev.compare:
            p.check(
                (Path(d) / "scores.json").exists(),
                "eval.compare",
                f"{d}/scores.json not found (run the evaluate stage there first)",
            )
        return p
    for name, bcfg in ev.benchmarks.items():  # names and values: the key check and schema
        try:
            cls = benchmark_class(name, bcfg)
        except Exception as e:  # noqa: BLE001 - hydra wraps ImportError and AttributeError
            p.add(f"eval.benchmarks.{name}._target_", f"cannot import it: {e.__cause__ or e}")
            continue
        if not (isinstance(cls, type) and issubclass(cls, Benchmark)):
            p.add(f"eval.benchmarks.{name}._target_", f"{cls} is not a Benchmark subclass")
            continue
        for err in cls.config_errors(bcfg, cfg):
            p.add(f"eval.benchmarks.{name}", err)
    model = ev.model
    if model.get("checkpoint"):
        p.check(
            Path(model.checkpoint).exists(),
            "eval.model.checkpoint",
            f"{model.checkpoint} does not exist",
        )
    return p


def llm_roles(cfg: DictConfig) -> list[str]:
    """The llm.roles evaluate calls (matrix.core.registry's roles_ref): the model under test
    when it is a role, and the judge when a chosen benchmark is judged; none to compare."""
    ev = cfg.get("eval") or {}
    if ev.get("compare"):
        return []
    role = model_role(ev.get("model") or {})
    roles = [role] if role else []
    benches = ev.get("benchmarks") or {}
    if any(_uses_judge(n, b) for n, b in benches.items()):
        roles.append("judge")
    return roles


def _uses_judge(name: str, bcfg: Any) -> bool:
    try:
        return bool(benchmark_class(name, bcfg).uses_judge)
    except Exception:  # noqa: BLE001 - an unknown name or target is the validator's to report
        return False


def model_under_test(cfg: DictConfig, roles: Roles) -> RoleLLM:
    ev = cfg.eval
    sampling = Sampling(**OmegaConf.to_container(ev.get("sampling") or {}, resolve=True))
    # Adopted by `roles`: its answers go through the call cache (a rerun asks nothing again)
    # and count against llm.budget and in the ledger like every role's.
    if ev.model.get("checkpoint"):
        from matrix.llm.hf import HFBackend

        return roles.adopt("model", HFBackend(model=str(ev.model.checkpoint)), sampling)
    role = roles.get(model_role(ev.model))
    return roles.adopt("model", role.backend, sampling, role.prices)


def _cached(
    path: Path, todo: list[Record], compute, chunk: int, bar: Progress, what: str
) -> list[Record]:
    """Rows for `todo` from the JSONL cache, computing (and appending) the missing ones;
    `what` names the work on the progress display `bar`."""
    jl = JsonlLog(path)
    jl.drop_torn_tail()  # the file is its own commit record: a half-written row is not one
    have = {r["id"]: r for r in jl.read()}  # a later duplicate would win, but none are written
    missing = [it for it in todo if it["id"] not in have]
    task = bar.add_task(what, total=len(todo), completed=len(todo) - len(missing))
    for start in range(0, len(missing), chunk):
        part = missing[start : start + chunk]
        rows = compute(part)
        jl.append(rows)
        have.update({r["id"]: r for r in rows})
        bar.update(task, completed=len(todo) - len(missing) + start + len(part))
    return [have[it["id"]] for it in todo]


def evaluate_benchmark(
    bench: Benchmark,
    model: Any,
    judge_fn,
    out_dir: Path,
    chunk: int,
    shard: Shard = Shard(),
    bar: Progress | None = None,
) -> tuple[dict, list[Record], list[Record], list[Record]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = bar or Progress(disable=True)
    name = out_dir.name
    items = shard.slice(bench.load())
    answers = _cached(
        out_dir / "answers.jsonl",
        items,
        lambda part: bench.answer(model, part),
        chunk,
        bar,
        f"answering {name}",
    )
    ans_by_id = {a["id"]: a for a in answers}
    judge = judge_fn() if bench.uses_judge else None
    judgments = _cached(
        out_dir / "judgments.jsonl",
        items,
        lambda part: bench.judge(judge, part, [ans_by_id[it["id"]] for it in part]),
        chunk,
        bar,
        f"judging {name}" if bench.uses_judge else f"checking {name}",
    )
    return bench.score(items, answers, judgments), items, answers, judgments


def capped(bcfg: DictConfig, limit: int | None) -> DictConfig:
    """`eval.limit` caps every benchmark's item count (debug=tiny), keeping smaller limits."""
    if not limit or "limit" not in bcfg:
        return bcfg
    capped = OmegaConf.create(OmegaConf.to_container(bcfg, resolve=True))
    capped.limit = min(int(limit), int(capped.limit)) if capped.limit else int(limit)
    return capped


def run_evaluate(cfg: DictConfig, roles: Roles | None = None) -> dict:
    """Run the evaluate stage; returns the scores (or the comparison rows with `compare`)."""
    check_stage(cfg, "evaluate", provided_backends=roles.provided if roles else ())
    run = open_stage(cfg, "evaluate")
    ev = cfg.eval
    if ev.get("compare"):
        a, b = (read_json(Path(d) / "scores.json") for d in ev.compare)
        table, rows = compare(a["scores"], b["scores"], (a["model"], b["model"]))
        atomic_write_text(run.dir / "compare.md", table)
        write_json(run.dir / "compare.json", rows)
        run.finish(counts={"compared": len(rows)}, inputs={"a": ev.compare[0], "b": ev.compare[1]})
        return {"compare": rows}

    roles = roles or Roles(cfg.llm)
    run.track_llm_spend(roles)
    model = model_under_test(cfg, roles)
    chunk = int(ev.get("chunk_size") or 64)
    scores = _run_benchmarks(cfg, run, roles, model, chunk)
    uses_judge = any(_uses_judge(n, ev.benchmarks[n]) for n in scores)
    judge_name = roles.get("judge").name if uses_judge else "-"
    write_json(
        run.dir / "scores.json", {"model": model.name, "judge": judge_name, "scores": scores}
    )
    plot_scores(scores, run.dir / "scores.png")
    write_report(run.dir, model.name, judge_name, scores)
    if not Shard.from_cfg(cfg).active:  # a shard's scores are partial: its merge records them
        record_on_card(cfg, scores, judge_name, run.dir)
    flat = {
        f"{b}/{k}": v for b, s in scores.items() for k, v in s.items() if isinstance(v, int | float)
    }
    run.summary(flat)
    _log_table(run, scores)
    ledger = roles.ledger()
    ledger["roles"]["model"] = model.usage.as_dict()
    # the sandbox walls the code benchmarks ran behind (matrix.eval.sandbox_walls)
    walls = next((s["sandbox"] for s in scores.values() if "sandbox" in s), None)
    run.finish(
        counts={f"{b}_n": int(s.get("n", s.get("n_advbench", 0))) for b, s in scores.items()},
        inputs={"model": ev.model.checkpoint} if ev.model.get("checkpoint") else None,
        extra={"llm": ledger, "model": model.name, "judge": judge_name}
        | ({"sandbox": walls} if walls else {}),
    )
    return scores


def record_on_card(cfg: DictConfig, scores: dict[str, dict], judge: str, out: Path) -> None:
    """Add the headline scores to the model card of the folder evaluated, when it is an
    exported model with a card (README.md); a folder that cannot be written is left as it is."""
    folder = cfg.eval.model.get("checkpoint")
    if not folder:
        return
    try:
        if record_eval_results(Path(folder), headline_scores(scores), judge, out):
            log.info("evaluate: scores added to the model card %s/README.md", folder)
    except OSError as e:
        log.warning("evaluate: model card of %s not updated: %s", folder, e)


def _run_benchmarks(cfg: DictConfig, run, roles: Roles, model: RoleLLM, chunk: int) -> dict:
    """Each benchmark answered, judged and scored in turn; its scores logged and plotted."""
    ev = cfg.eval
    scores: dict[str, dict] = {}
    with progress("evaluate") as bar:
        for name, bcfg in ev.benchmarks.items():
            bench = benchmark(name, capped(bcfg, ev.get("limit")))
            bench.bind_roles(roles)
            log.info("evaluate: %s", name)
            s, items, answers, judgments = evaluate_benchmark(
                bench,
                model,
                lambda: roles.get("judge"),
                run.dir / name,
                chunk,
                Shard.from_cfg(cfg),
                bar,
            )
            scores[name] = s
            run.log({f"{name}/{k}": v for k, v in s.items() if isinstance(v, int | float)})
            points = (
                bench.per_item_lengths(items, answers, judgments)
                if hasattr(bench, "per_item_lengths")
                else []
            )
            if len(points) >= 5:
                plot_winrate_vs_length(points, run.dir / f"{name}_winrate_vs_length.png")
    return scores


def _log_table(run, scores: dict[str, dict]) -> None:
    if run.wandb_run is None:
        return
    import wandb

    rows = [
        [b, k, float(v)]
        for b, s in scores.items()
        for k, v in s.items()
        if isinstance(v, int | float)
    ]
    run.wandb_run.log(
        {"eval/scores": wandb.Table(columns=["benchmark", "metric", "value"], data=rows)}
    )
