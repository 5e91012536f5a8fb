"""The generate stage's settings: the sets of `generator.sets` as typed specs, and every
config problem found before any model loads (`validate`, the stage registry's validator)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from matrix.common.schema import check
from matrix.common.validation import ConfigProblems
from matrix.core.shard import Shard
from matrix.gen.settings import Retrieval
from matrix.gen.sources import build_source, seed_source
from matrix.gen.synthesis import SetSpec, template_id
from matrix.llm.prompts import PromptError, render_prompt
from matrix.llm.served_folder import folder_problem

log = logging.getLogger(__name__)


REJECTED_BACKEND = "rejected_model"


# -- config ----------------------------------------------------------------------------------
def effective_target(spec_target: int, limit: int | None) -> int:
    return min(spec_target, int(limit)) if limit is not None else spec_target


def _retrieval(cfg: DictConfig, s: DictConfig) -> dict[str, Any]:
    """The global `retrieval` settings with the set's own `retrieval:` block on top."""
    merged = OmegaConf.merge(cfg.generate.retrieval, s.get("retrieval") or {})
    return OmegaConf.to_container(merged, resolve=True)


def selected_sets(cfg: DictConfig) -> dict[str, Any]:
    """The sets of `generator.sets` this run generates: those `generate.run_sets` names, in
    its order, or all of them when it is null (a pipeline step may generate some sets only:
    experiment=paper_matrix_tuned makes the SFT rows, trains on them, then the DPO pairs)."""
    sets = cfg.generator.get("sets") or {}
    only = cfg.generate.get("run_sets")
    if only is None:
        return dict(sets.items())
    return {str(n): sets[n] for n in only if n in sets}


def build_specs(cfg: DictConfig, shard: Shard = Shard()) -> list[SetSpec]:
    """The sets to generate; a shard's targets are its share of each set's target, so the
    shards' rows add up to the unsharded target (before the merge drops cross-shard
    duplicates, see merge_shards)."""
    specs = []
    for name, s in selected_sets(cfg).items():
        need = str(s.need)
        source = seed_source(s.source, f"generator.sets.{name}.source")
        need_text = str(cfg.generate.needs[need]) if need in cfg.generate.needs else need
        specs.append(
            SetSpec(
                name=str(name),
                kind=str(s.kind),
                domain=str(s.domain),
                source=source.name or type(source).__name__,
                seed_source=source,
                need_name=need if need in cfg.generate.needs else "custom",
                need_text=need_text,
                target=shard.share(effective_target(int(s.target), cfg.generate.limit)),
                turns=int(s.get("turns", 1)),
                allow_refusals=bool(s.get("allow_refusals", False)),
                prompts=OmegaConf.to_container(s.prompts, resolve=True),
                retrieval=_retrieval(cfg, s),
            )
        )
    return specs


def _check_set(p: ConfigProblems, cfg: DictConfig, name: str, s: DictConfig) -> None:
    """A set's need and templates (its values are typed: matrix.gen.settings)."""
    key = f"generator.sets.{name}"
    turns = s.get("turns", 1)
    try:
        src = build_source(s.source)
    except ValueError as e:
        p.add(f"{key}.source", str(e))
        return
    need = str(s.get("need") or "")
    # A need is either a name from `needs` or a sentence of its own; a lone unknown word is
    # almost always a typo of a name.
    p.check(
        need in cfg.generate.needs or len(need.split()) >= 3,
        f"{key}.need",
        f"{need!r} is not one of {sorted(cfg.generate.needs)}; name one of generate.needs, or write the need as a sentence",
    )
    prompts = s.get("prompts") or {}
    fields = {f: "x" for f in src.fields}
    if src.instruction_prompt and p.check(
        bool(prompts.get("instruction")), f"{key}.prompts.instruction", "missing"
    ):
        _check_template(p, prompts.instruction, f"{key}.prompts.instruction", fields)
    if p.check(bool(prompts.get("response")), f"{key}.prompts.response", "missing"):
        _check_template(p, prompts.response, f"{key}.prompts.response", {"instruction": "x"})
    if turns > 1 and p.check(
        bool(prompts.get("follow_up")), f"{key}.prompts.follow_up", "missing; needed when turns > 1"
    ):
        _check_template(
            p, prompts.follow_up, f"{key}.prompts.follow_up", {**fields, "conversation": "x"}
        )


def _check_template(p: ConfigProblems, tpl: Any, key: str, fields: dict[str, str]) -> None:
    try:
        render_prompt(tpl, key, **fields)
    except PromptError as e:
        p.add(key, str(e))


def validate(cfg: DictConfig) -> ConfigProblems:
    """What needs more than the typed values (matrix.gen.settings, checked first): the sets
    to run, needs, templates, roles, the simulation folder; all problems listed at once."""
    p = ConfigProblems()
    g = cfg.generate
    all_sets = cfg.generator.get("sets") or {}
    p.check(bool(all_sets), "generator.sets", "no sets; pick a generator=... option or define sets")
    if g.get("run_sets") is not None:
        unknown = [str(n) for n in g.run_sets if n not in all_sets]
        p.check(
            not unknown and len(g.run_sets) > 0,
            "generate.run_sets",
            f"{unknown or '[]'}: name sets of generator.sets ({', '.join(all_sets)}), or null for all",
        )
    sets = selected_sets(cfg)
    for name, s in sets.items():
        _check_set(p, cfg, str(name), s)
    for n, s in sets.items():  # a set's own retrieval block, merged over generate.retrieval
        if s.get("retrieval"):
            check(_retrieval(cfg, s), Retrieval, f"generator.sets.{n}.retrieval", p)
    _check_models(p, cfg, sets)
    if reads_simulation(sets):
        _check_simulation(p, cfg)
    return p


def reads_simulation(sets: dict[str, Any]) -> bool:
    """Whether any of `sets` draws its seeds from the simulate output."""
    out = False
    for s in sets.values():
        try:
            out |= build_source(s.source).reads_simulation
        except ValueError:
            continue  # reported by _check_set
    return out


def llm_roles(cfg: DictConfig) -> list[str]:
    """The llm.roles generate calls (matrix.core.registry's roles_ref): the generator and the
    responder, and for a DPO set the rejecter, unless generate.rejected_model (a model folder,
    run by generate.rejected_backend) writes the rejected answers."""
    roles = ["generator", "responder"]
    dpo = any(s.get("kind") == "dpo" for s in selected_sets(cfg).values())
    if dpo and not cfg.generate.get("rejected_model"):
        roles.append("rejecter")
    return roles


def _check_models(p: ConfigProblems, cfg: DictConfig, sets: dict[str, Any]) -> None:
    """The roles it calls (llm_roles), and the rejected-answer model folder if one is set."""
    for role in llm_roles(cfg):
        p.check(role in cfg.llm.roles, f"llm.roles.{role}", "missing; generate needs this role")
    p.check(
        "model" not in (cfg.generate.get("rejected_backend") or {}),
        "generate.rejected_backend.model",
        "set generate.rejected_model instead (the folder the backend runs)",
    )
    if cfg.generate.rejected_model:
        problem = folder_problem(str(cfg.generate.rejected_model))
        p.check(
            problem is None,
            "generate.rejected_model",
            f"{problem}; point it at train.py's hf_model/ folder (in a pipeline, the step that "
            "trains it runs first: check that it finished)",
        )


def _check_simulation(p: ConfigProblems, cfg: DictConfig) -> None:
    d = Path(str(cfg.generate.simulation_dir))
    how = (
        f"run `python simulate.py run.name={cfg.run.name}` first (it writes "
        f"{cfg.paths.runs_dir}/{cfg.run.name}/simulate/), or set generate.simulation_dir=<a simulate output folder>"
    )
    if not (d / "scenarios.jsonl").is_file():
        p.add("generate.simulation_dir", f"no scenarios.jsonl in {d}; {how}")
    elif not (d / "scenarios.jsonl").read_text(encoding="utf-8").strip():
        p.add(
            "generate.simulation_dir",
            f"{d}/scenarios.jsonl has no scenarios; simulate for more rounds ({how})",
        )
    elif not ((d / "agents.jsonl").is_file() or (d / "state.json").is_file()):
        p.add("generate.simulation_dir", f"no agents.jsonl (or state.json) in {d}; {how}")


def templates_of(spec: SetSpec) -> dict[str, str]:
    return {k: template_id(spec.name, k, v) for k, v in spec.prompts.items()}
