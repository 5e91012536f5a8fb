"""The generate stage: simulation scenarios -> retrieved seeds -> synthesized rows -> filters
-> sft.jsonl / dpo.jsonl / <domain>.jsonl, a Hugging Face dataset folder and a data card.

Sets are generated in steps of `generate.batch_size` seeds until each reaches its target
exactly. Crash safety follows the simulator: a step appends accepted rows to
sets/<set>.jsonl and dropped ones to filtered.jsonl, then writes state.json atomically; on
resume both files are truncated to the counts state.json records, and seeds, ids and
sampling seeds derive from those counts, so a killed run continues with no duplicates.

A shard (`shard.count>1`, see matrix.shard) generates its part of every set from the
scenarios it owns; `python -m matrix.merge generate` joins the shards.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from matrix.embeddings import Encoder
from matrix.gen.candidates import row_instruction, row_responses
from matrix.gen.datacard import write_datacard
from matrix.gen.filters import Deduper, RowChecks, Rules, filter_batch
from matrix.gen.inputs import Seed, SimulationData, load_simulation, persona_seeds, simulation_seeds
from matrix.gen.retrieval import mmr
from matrix.gen.stats import coverage, diversity
from matrix.gen.synthesis import SetSpec, StepRoles, synthesize, template_id
from matrix.io import JsonlLog, read_json, text_sha256, write_json, write_jsonl
from matrix.llm.protocol import LLM
from matrix.llm.roles import Roles
from matrix.progress import progress
from matrix.prompts import PromptError, render_prompt
from matrix.shard import Shard
from matrix.stage import StageRun, open_stage
from matrix.validation import ConfigError, ConfigProblems

log = logging.getLogger(__name__)

KINDS = ("sft", "dpo")
SOURCES = ("simulation", "persona", "magpie")
REJECTED_BACKEND = "rejected_model"
# Template fields each source provides (checked before any model loads).
_SEED_FIELDS = {
    "simulation": ("need", "name", "persona", "goal", "others", "scenario", "actions"),
    "persona": ("need", "name", "persona", "goal", "others"),
    "magpie": ("need",),
}


# -- config ----------------------------------------------------------------------------------
def effective_target(spec_target: int, limit: int | None) -> int:
    return min(spec_target, int(limit)) if limit is not None else spec_target


def _retrieval(cfg: DictConfig, s: DictConfig) -> dict[str, Any]:
    """The global `retrieval` settings with the set's own `retrieval:` block on top."""
    merged = OmegaConf.merge(cfg.generate.retrieval, s.get("retrieval") or {})
    return OmegaConf.to_container(merged, resolve=True)


def build_specs(cfg: DictConfig, shard: Shard = Shard()) -> list[SetSpec]:
    """The sets to generate; a shard's targets are its share of each set's target, so the
    shards' rows add up to the unsharded target (before the merge drops cross-shard
    duplicates, see merge_shards)."""
    specs = []
    for name, s in cfg.generator.sets.items():
        need = str(s.need)
        need_text = str(cfg.generate.needs[need]) if need in cfg.generate.needs else need
        specs.append(
            SetSpec(
                name=str(name),
                kind=str(s.kind),
                domain=str(s.domain),
                source=str(s.source),
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
    key = f"generator.sets.{name}"
    p.check(
        s.get("kind") in KINDS, f"{key}.kind", f"{s.get('kind')!r} is not one of {', '.join(KINDS)}"
    )
    src = s.get("source")
    p.check(src in SOURCES, f"{key}.source", f"{src!r} is not one of {', '.join(SOURCES)}")
    target = s.get("target")
    p.check(
        isinstance(target, int) and target >= 1,
        f"{key}.target",
        f"{target!r} must be an integer >= 1",
    )
    turns = s.get("turns", 1)
    if p.check(
        isinstance(turns, int) and turns >= 1, f"{key}.turns", f"{turns!r} must be an integer >= 1"
    ):
        p.check(
            not (s.get("kind") == "dpo" and turns > 1),
            f"{key}.turns",
            "DPO sets are single-turn (prompt, chosen, rejected); use turns: 1",
        )
    need = str(s.get("need") or "")
    # A need is either a name from `needs` or a sentence of its own; a lone unknown word is
    # almost always a typo of a name.
    p.check(
        need in cfg.generate.needs or len(need.split()) >= 3,
        f"{key}.need",
        f"{need!r} is not one of {sorted(cfg.generate.needs)}; name one of generate.needs, or write the need as a sentence",
    )
    prompts = s.get("prompts") or {}
    fields = {f: "x" for f in _SEED_FIELDS.get(src, ())}
    if src != "magpie" and p.check(
        bool(prompts.get("instruction")), f"{key}.prompts.instruction", "missing"
    ):
        _check_template(p, prompts.instruction, f"{key}.prompts.instruction", fields)
    if p.check(bool(prompts.get("response")), f"{key}.prompts.response", "missing"):
        _check_template(p, prompts.response, f"{key}.prompts.response", {"instruction": "x"})
    if (
        isinstance(turns, int)
        and turns > 1
        and p.check(
            bool(prompts.get("follow_up")),
            f"{key}.prompts.follow_up",
            "missing; needed when turns > 1",
        )
    ):
        _check_template(
            p, prompts.follow_up, f"{key}.prompts.follow_up", {**fields, "conversation": "x"}
        )


def _check_template(p: ConfigProblems, tpl: Any, key: str, fields: dict[str, str]) -> None:
    try:
        render_prompt(tpl, key, **fields)
    except PromptError as e:
        p.add(key, str(e))


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked before a model loads, all problems listed at once."""
    p = ConfigProblems()
    g = cfg.generate
    sets = cfg.generator.get("sets") or {}
    p.check(bool(sets), "generator.sets", "no sets; pick a generator=... option or define sets")
    for name, s in sets.items():
        _check_set(p, cfg, str(name), s)
    p.check(
        g.limit is None or (isinstance(g.limit, int) and g.limit >= 1),
        "generate.limit",
        "must be >= 1 or null",
    )
    p.check(int(g.batch_size) >= 1, "generate.batch_size", "must be >= 1")
    p.check(float(g.oversample) >= 1.0, "generate.oversample", "must be >= 1.0")
    p.check(float(g.max_attempts_factor) >= 1.0, "generate.max_attempts_factor", "must be >= 1.0")
    f = cfg.generate.filters
    for key, r in [("generate.retrieval", cfg.generate.retrieval)] + [
        (f"generator.sets.{n}.retrieval", _retrieval(cfg, s))
        for n, s in sets.items()
        if s.get("retrieval")
    ]:
        p.check(
            r["top_k"] is None or int(r["top_k"]) >= 1, f"{key}.top_k", "must be >= 1 or null (all)"
        )
        p.check(0.0 <= float(r["mmr_lambda"]) <= 1.0, f"{key}.mmr_lambda", "must be within [0, 1]")
        p.check(
            r["personas_per_scenario"] is None or int(r["personas_per_scenario"]) >= 1,
            f"{key}.personas_per_scenario",
            "must be >= 1 or null",
        )
    p.check(
        0.0 < float(f.near_dup_threshold) <= 1.0,
        "generate.filters.near_dup_threshold",
        "must be within (0, 1]",
    )
    p.check(
        int(f.max_instruction_chars) > int(f.min_instruction_chars),
        "generate.filters.max_instruction_chars",
        "must be above generate.filters.min_instruction_chars",
    )
    needed_roles = ["generator", "responder"]
    if any(s.get("kind") == "dpo" for s in sets.values()) and not cfg.rejected_model:
        needed_roles.append("rejecter")
    for role in needed_roles:
        p.check(role in cfg.llm.roles, f"llm.roles.{role}", "missing; generate needs this role")
    if cfg.rejected_model:
        p.check(
            (Path(str(cfg.rejected_model)) / "config.json").is_file(),
            "rejected_model",
            f"no Hugging Face model folder at {cfg.rejected_model} (expected config.json); "
            "point it at train.py's hf_model/ folder",
        )
    if any(s.get("source") in ("simulation", "persona") for s in sets.values()):
        _check_simulation(p, cfg)
    p.raise_if_any("generate")


def _check_simulation(p: ConfigProblems, cfg: DictConfig) -> None:
    d = Path(str(cfg.simulation_dir))
    how = (
        f"run `python simulate.py run.name={cfg.run.name}` first (it writes "
        f"{cfg.paths.runs_dir}/{cfg.run.name}/simulate/), or set simulation_dir=<a simulate output folder>"
    )
    if not (d / "scenarios.jsonl").is_file():
        p.add("simulation_dir", f"no scenarios.jsonl in {d}; {how}")
    elif not (d / "scenarios.jsonl").read_text(encoding="utf-8").strip():
        p.add(
            "simulation_dir",
            f"{d}/scenarios.jsonl has no scenarios; simulate for more rounds ({how})",
        )
    elif not ((d / "agents.jsonl").is_file() or (d / "state.json").is_file()):
        p.add("simulation_dir", f"no agents.jsonl (or state.json) in {d}; {how}")


# -- state -----------------------------------------------------------------------------------
@dataclass
class SetState:
    rows: int = 0
    seeds_used: int = 0
    steps: int = 0
    surplus: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    # What the committed rows were made with; a resume with other prompts is refused.
    kind: str | None = None
    templates: dict[str, str] = field(default_factory=dict)


@dataclass
class GenState:
    sets: dict[str, SetState] = field(default_factory=dict)
    filtered_rows: int = 0

    @classmethod
    def load(cls, path: Path) -> GenState:
        if not path.exists():
            return cls()
        d = read_json(path)
        return cls({k: SetState(**v) for k, v in d["sets"].items()}, d["filtered_rows"])

    def save(self, path: Path) -> None:
        write_json(
            path,
            {
                "sets": {k: asdict(v) for k, v in self.sets.items()},
                "filtered_rows": self.filtered_rows,
            },
        )


# -- the stage -------------------------------------------------------------------------------
def make_roles(cfg: DictConfig, backends: dict[str, LLM] | None = None) -> Roles:
    """Roles from cfg.llm; with `rejected_model`, the rejecter runs that HF folder."""
    llm_cfg = cfg.llm
    if cfg.rejected_model:
        llm_cfg = OmegaConf.create(OmegaConf.to_container(cfg.llm, resolve=True))
        llm_cfg.backends[REJECTED_BACKEND] = {
            "_target_": "matrix.llm.hf.HFBackend",
            "model": str(cfg.rejected_model),
            "dtype": "auto",
            "device": "auto",
        }
        rejecter = llm_cfg.roles.get("rejecter") or {
            "max_new_tokens": llm_cfg.roles.responder.max_new_tokens
        }
        llm_cfg.roles.rejecter = {**rejecter, "backend": REJECTED_BACKEND}
    return Roles(llm_cfg, backends)


class Generation:
    def __init__(
        self,
        cfg: DictConfig,
        run: StageRun,
        roles: Roles,
        encoder: Encoder,
        sim: SimulationData | None,
    ):
        self.cfg, self.run, self.roles, self.encoder, self.sim = cfg, run, roles, encoder, sim
        self.shard = Shard.from_cfg(cfg)
        self.specs = build_specs(cfg, self.shard)
        self.state_path = run.dir / "state.json"
        self.filtered = JsonlLog(run.dir / "filtered.jsonl")
        self.logs = {s.name: JsonlLog(run.dir / "sets" / f"{s.name}.jsonl") for s in self.specs}
        self.checks = RowChecks(Rules.from_cfg(cfg.generate.filters))
        self.dedup = {k: Deduper(float(cfg.generate.filters.near_dup_threshold)) for k in KINDS}
        self.state = self.resume()

    def resume(self) -> GenState:
        state = GenState.load(self.state_path)
        dropped = self.filtered.truncate(state.filtered_rows)
        for spec in self.specs:
            st = state.sets.setdefault(spec.name, SetState())
            dropped += self.logs[spec.name].truncate(st.rows)
            self._check_unchanged(spec, st)
            rows = self.logs[spec.name].read()
            if rows:  # accepted rows of earlier runs keep blocking their duplicates
                texts = [row_instruction(r) for r in rows]
                for t, v in zip(texts, self.encoder.encode(texts), strict=True):
                    self.dedup[spec.kind].add(t, v)
        if dropped:
            log.info("resume: dropped %d rows written after the last checkpoint", dropped)
        return state

    def _check_unchanged(self, spec: SetSpec, st: SetState) -> None:
        templates = _templates(spec)
        if st.rows and st.kind is not None and (st.kind, st.templates) != (spec.kind, templates):
            raise ConfigError(
                f"generator.sets.{spec.name}: its kind or prompts changed since {st.rows} rows were "
                f"written to {self.logs[spec.name].path}; rows made with other prompts would mix. "
                "Use a new run.name, or rename the set to keep both."
            )
        st.kind, st.templates = spec.kind, templates

    def seeds(self, spec: SetSpec) -> list[Seed]:
        if spec.source == "magpie":
            return [Seed("magpie")]
        assert self.sim is not None
        if spec.source == "persona":
            return self.shard.slice(persona_seeds(self.sim))
        r = spec.retrieval
        summaries = [s["summary"] for s in self.sim.scenarios]
        vecs = self.encoder.encode([spec.need_text, *summaries])
        top_k = len(summaries) if r["top_k"] is None else int(r["top_k"])
        # Every shard ranks all scenarios, then keeps its own: the shards together use the
        # scenarios an unsharded run retrieves, each scenario in one shard only.
        order = mmr(vecs[0], vecs[1:], top_k, float(r["mmr_lambda"]))
        per = r["personas_per_scenario"]
        owned = [i for i in order if self.shard.owns(i)]
        return simulation_seeds(self.sim, owned, None if per is None else int(per))

    def models(self, kinds: set[str]) -> dict[str, str]:
        roles = ["generator", "responder"] + (["rejecter"] if "dpo" in kinds else [])
        return {r: self.roles.get(r).name for r in roles}

    def lineage(self, spec: SetSpec) -> dict[str, Any]:
        models = self.models({spec.kind})
        templates = _templates(spec)
        return {
            "generator": str(self.cfg.generator.name),
            "set": spec.name,
            "need": spec.need_name,
            "source": spec.source,
            "template": templates.get("instruction"),
            "templates": templates,
            "models": models,
        }

    def run_set(self, spec: SetSpec, bar, task) -> None:
        st = self.state.sets[spec.name]
        if st.rows >= spec.target:
            return
        seeds = self.seeds(spec)
        if not seeds and self.shard.active:
            raise ConfigError(
                f"generator.sets.{spec.name}: shard {self.shard.name} owns none of the "
                f"{spec.source} seeds (a shard owns the scenarios or personas at positions "
                f"i % {self.shard.count} == {self.shard.index}); lower shard.count, or raise "
                "generate.retrieval.top_k"
            )
        if not seeds:
            raise ConfigError(
                f"generator.sets.{spec.name}: no (scenario, persona) seeds in "
                f"{self.cfg.simulation_dir}; the simulation has no usable scenarios"
            )
        g = self.cfg.generate
        cap = math.ceil(spec.target * float(g.max_attempts_factor))
        roles = StepRoles(
            self.roles.get("generator"),
            self.roles.get("responder"),
            self.roles.get("rejecter") if spec.kind == "dpo" else None,
        )
        base_lineage = self.lineage(spec)
        # Sets get their own sampling streams, stable under reordering of the config.
        set_offset = int(text_sha256(spec.name)[:6], 16)
        while st.rows < spec.target:
            if st.seeds_used >= cap:
                raise ConfigError(
                    f"generator.sets.{spec.name}: {st.rows}/{spec.target} rows after {st.seeds_used} "
                    f"seeds (cap: target x generate.max_attempts_factor={g.max_attempts_factor}); "
                    f"{len(seeds)} distinct (scenario, persona) seeds were retrieved and the filters "
                    f"dropped {dict(st.filtered)}. Simulate more scenarios, raise generate.retrieval.top_k or "
                    "generate.max_attempts_factor, loosen filters, or lower the target."
                )
            missing = spec.target - st.rows
            n = min(
                int(g.batch_size),
                max(1, math.ceil(missing * float(g.oversample))),
                cap - st.seeds_used,
            )
            idx = range(st.seeds_used, st.seeds_used + n)
            batch = [seeds[i % len(seeds)] for i in idx]
            ids = [f"{spec.name}-{self.shard.global_index(i):06d}" for i in idx]
            # Steps are spaced far apart: a backend seeds its sub-batches with seed + b, and
            # the streams of one step must not repeat another step's (nor another shard's).
            stream = self.shard.global_index(st.steps)
            sample_seed = int(self.cfg.seed) * 1_000_003 + set_offset + 10_007 * stream
            cands = synthesize(
                spec, ids, batch, roles, sample_seed, int(g.max_actions), int(g.max_action_chars)
            )
            vectors = self.encoder.encode([c.instruction for c in cands])
            kept, dropped, surplus = filter_batch(
                cands, vectors, self.checks, self.dedup[spec.kind], spec.allow_refusals, missing
            )
            rows = [
                c.to_row(
                    spec.name, spec.domain, {**base_lineage, **c.seed.lineage(), "step": st.steps}
                )
                for c in kept
            ]
            # Commit: rows first, then the state that counts them.
            st.rows += self.logs[spec.name].append(rows)
            self.state.filtered_rows += self.filtered.append(
                {
                    "id": c.id,
                    "set": spec.name,
                    "reason": why,
                    "messages": c.messages,
                    "rejected": c.rejected,
                }
                for c, why in dropped
            )
            for _, why in dropped:
                st.filtered[why] = st.filtered.get(why, 0) + 1
            st.seeds_used += n
            st.steps += 1
            st.surplus += surplus
            self.state.save(self.state_path)
            self.run.log(
                {
                    f"gen/{spec.name}/rows": st.rows,
                    f"gen/{spec.name}/dropped": len(dropped),
                    # calls sent so far, earlier attempts included (what a step costs)
                    "gen/llm_calls": self.roles.total.calls,
                }
            )
            bar.update(task, completed=st.rows)

    def generate(self) -> None:
        with progress() as bar:
            for spec in self.specs:
                st = self.state.sets[spec.name]
                task = bar.add_task(
                    f"generate: {spec.name}", total=spec.target, completed=min(st.rows, spec.target)
                )
                self.run_set(spec, bar, task)

    # -- outputs ---------------------------------------------------------------------------
    def finalize(self) -> dict[str, Any]:
        by_set = {s.name: self.logs[s.name].read()[: s.target] for s in self.specs}
        models = self.models({s.kind for s in self.specs})
        return write_outputs(
            self.run.dir,
            self.cfg,
            self.specs,
            by_set,
            self.state.sets,
            models,
            self.encoder,
            self.sim,
        )


def write_outputs(
    out: Path,
    cfg: DictConfig,
    specs: list[SetSpec],
    by_set: dict[str, list[dict]],
    states: dict[str, SetState],
    models: dict[str, str],
    encoder: Encoder,
    sim: SimulationData | None,
) -> dict[str, Any]:
    """sft.jsonl / dpo.jsonl / <domain>.jsonl, hf/, stats.json and datacard.md from the
    accepted rows of each set; returns counts, stats and the per-set table for the manifest.
    (Written by a finished run and by the merge of shards.)"""
    files: list[str] = []
    kinds: dict[str, list[dict]] = {k: [] for k in KINDS}
    domains: dict[str, list[dict]] = {}
    for spec in specs:
        kinds[spec.kind].extend(by_set[spec.name])
        dkey = spec.domain if spec.kind == "sft" else f"{spec.domain}_dpo"
        domains.setdefault(dkey, []).extend(by_set[spec.name])
    for kind, rows in kinds.items():
        if rows:
            write_jsonl(out / f"{kind}.jsonl", rows)
            files.append(f"{kind}.jsonl")
    for dkey, rows in domains.items():
        if dkey not in KINDS:  # a domain named sft/dpo would overwrite the main files
            write_jsonl(out / f"{dkey}.jsonl", rows)
            files.append(f"{dkey}.jsonl")
    if cfg.generate.export_hf:
        export_hf(out / "hf", {k: v for k, v in kinds.items() if v})
        files.append("hf/ (datasets.load_from_disk)")

    stats: dict[str, dict[str, Any]] = {}
    n_scen = len(sim.scenarios) if sim else 0
    n_agents = len(sim.agents) if sim else 0
    for kind, rows in kinds.items():
        if rows:
            ins = [row_instruction(r) for r in rows]
            resp = [t for r in rows for t in row_responses(r)]
            stats[kind] = {
                **diversity(ins, resp, encoder.encode(ins)),
                **coverage(rows, n_scen, n_agents),
            }
    for spec in specs:
        rows = by_set[spec.name]
        if rows and len(specs) > 1:
            ins = [row_instruction(r) for r in rows]
            stats[f"set:{spec.name}"] = diversity(
                ins, [t for r in rows for t in row_responses(r)], encoder.encode(ins)
            )
    write_json(out / "stats.json", stats)
    set_rows = [
        {
            "name": s.name,
            "kind": s.kind,
            "domain": s.domain,
            "source": s.source,
            "need": s.need_name,
            "target": s.target,
            **asdict(states[s.name]),
            "rows": len(by_set[s.name]),
        }
        for s in specs
    ]
    write_datacard(
        out / "datacard.md",
        generator=str(cfg.generator.name),
        sim_dir=str(cfg.simulation_dir),
        models=models,
        sets=set_rows,
        stats=stats,
        files=files + ["sets/<set>.jsonl", "filtered.jsonl", "stats.json", "manifest.json"],
        examples={s.name: by_set[s.name][:2] for s in specs},
        filters_cfg=OmegaConf.to_container(cfg.generate.filters, resolve=True),
        retrieval_cfg=OmegaConf.to_container(cfg.generate.retrieval, resolve=True),
    )
    counts: dict[str, Any] = {"sft": len(kinds["sft"]), "dpo": len(kinds["dpo"])}
    counts |= {f"set/{s['name']}": s["rows"] for s in set_rows}
    counts["filtered"] = sum(sum(s["filtered"].values()) for s in set_rows)
    counts["seeds_used"] = sum(s["seeds_used"] for s in set_rows)
    return {"counts": counts, "stats": stats, "sets": set_rows, "models": models}


def _templates(spec: SetSpec) -> dict[str, str]:
    return {k: template_id(spec.name, k, v) for k, v in spec.prompts.items()}


def export_hf(path: Path, splits: dict[str, list[dict]]) -> None:
    """A datasets folder with one split per data kind (sft, dpo); load with load_from_disk."""
    import shutil

    from datasets import Dataset, DatasetDict

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def simulation_input(cfg: DictConfig) -> tuple[SimulationData | None, dict[str, Path]]:
    """The simulate output the sets draw from (None when every set is magpie) and the files
    the manifest records as inputs."""
    if not any(s.get("source") in ("simulation", "persona") for s in cfg.generator.sets.values()):
        return None, {}
    sim = load_simulation(str(cfg.simulation_dir))
    return sim, {"scenarios": sim.dir / "scenarios.jsonl", "agents": sim.agents_file}


def run_generate(cfg: DictConfig, backends: dict[str, LLM] | None = None) -> dict[str, Any]:
    validate(cfg)
    sim, inputs = simulation_input(cfg)
    run = open_stage(cfg, "generate")
    roles = make_roles(cfg, backends)
    run.track_llm_spend(roles)
    encoder = Encoder(cfg.embedding.model, cache_dir=cfg.paths.cache_dir)
    gen = Generation(cfg, run, roles, encoder, sim)
    gen.generate()
    result = gen.finalize()
    run.finish(
        result["counts"],
        inputs=inputs,
        extra={
            "llm": roles.ledger(),
            "models": result["models"],
            "stats": result["stats"],
            "sets": result["sets"],
        },
    )
    log.info("generate: %s", result["counts"])
    return {**result, "ledger": roles.ledger(), "dir": str(run.dir)}
