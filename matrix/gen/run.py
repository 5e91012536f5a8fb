"""The generate stage: simulation scenarios -> retrieved seeds -> synthesized rows -> filters
-> sft.jsonl / dpo.jsonl / <domain>.jsonl, a Hugging Face dataset folder and a data card.

Sets are generated in steps of `generate.batch_size` seeds until each reaches its target
exactly. Crash safety follows the simulator: a step appends accepted rows to
sets/<set>.jsonl and dropped ones to filtered.jsonl, then writes state.json atomically; on
resume both files are truncated to the counts state.json records, and seeds, ids and
sampling seeds derive from those counts, so a killed run continues with no duplicates.

A shard (`shard.count>1`, see matrix.core.shard) generates its part of every set from the
scenarios it owns; `python -m matrix.merge generate` joins the shards.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from matrix.common.io import JsonlLog, text_sha256
from matrix.common.progress import progress
from matrix.common.validation import ConfigError
from matrix.core.config_check import check_stage
from matrix.core.shard import Shard
from matrix.core.stage import StageRun, open_stage
from matrix.gen.candidates import row_instruction
from matrix.gen.config import (
    REJECTED_BACKEND,
    build_specs,
    reads_simulation,
    templates_of,
)
from matrix.gen.filters import Deduper, RowChecks, Rules, filter_batch
from matrix.gen.inputs import Seed, SimulationData, load_simulation
from matrix.gen.outputs import write_outputs
from matrix.gen.settings import KINDS
from matrix.gen.sources import SeedContext
from matrix.gen.state import GenState, SetState
from matrix.gen.synthesis import SetSpec, StepRoles, synthesize
from matrix.llm.embeddings import Encoder
from matrix.llm.protocol import LLM
from matrix.llm.roles import Roles

log = logging.getLogger(__name__)


def make_roles(cfg: DictConfig, backends: dict[str, LLM] | None = None) -> Roles:
    """Roles from cfg.llm; with `generate.rejected_model`, the rejecter runs that HF folder
    with the backend `generate.rejected_backend` names (in process, or served by vLLM)."""
    llm_cfg = cfg.llm
    if cfg.generate.rejected_model:
        llm_cfg = OmegaConf.create(OmegaConf.to_container(cfg.llm, resolve=True))
        llm_cfg.backends[REJECTED_BACKEND] = {
            **OmegaConf.to_container(cfg.generate.rejected_backend, resolve=True),
            "model": str(cfg.generate.rejected_model),
        }
        rejecter = llm_cfg.roles.get("rejecter") or {
            "max_new_tokens": llm_cfg.roles.responder.max_new_tokens
        }
        llm_cfg.roles.rejecter = {**rejecter, "backend": REJECTED_BACKEND}
    return Roles(llm_cfg, backends)


def rejected_model_record(cfg: DictConfig, roles: Roles) -> dict[str, Any] | None:
    """The manifest's record of the rejected-answer folder: where it is, which backend ran it
    and, when served, under which name and where."""
    if not cfg.generate.rejected_model:
        return None
    record = {
        "folder": str(cfg.generate.rejected_model),
        "backend": str(cfg.generate.rejected_backend._target_),
    }
    built = roles.built(REJECTED_BACKEND)
    served = getattr(built, "served", None)
    return {**record, **served()} if callable(served) else record


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
        templates = templates_of(spec)
        if st.rows and st.kind is not None and (st.kind, st.templates) != (spec.kind, templates):
            raise ConfigError(
                f"generator.sets.{spec.name}: its kind or prompts changed since {st.rows} rows were "
                f"written to {self.logs[spec.name].path}; rows made with other prompts would mix. "
                "Use a new run.name, or rename the set to keep both."
            )
        st.kind, st.templates = spec.kind, templates

    def seeds(self, spec: SetSpec) -> list[Seed]:
        return spec.seed_source.seeds(SeedContext(self.sim, self.encoder, self.shard), spec)

    def models(self, kinds: set[str]) -> dict[str, str]:
        roles = ["generator", "responder"] + (["rejecter"] if "dpo" in kinds else [])
        return {r: self.roles.get(r).name for r in roles}

    def lineage(self, spec: SetSpec) -> dict[str, Any]:
        models = self.models({spec.kind})
        templates = templates_of(spec)
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
        """Steps of `generate.batch_size` seeds until the set has exactly its target rows."""
        st = self.state.sets[spec.name]
        if st.rows >= spec.target:
            return
        seeds = self._seeds_or_fail(spec)
        cap = math.ceil(spec.target * float(self.cfg.generate.max_attempts_factor))
        roles = StepRoles(
            self.roles.get("generator"),
            self.roles.get("responder"),
            self.roles.get("rejecter") if spec.kind == "dpo" else None,
        )
        while st.rows < spec.target:
            if st.seeds_used >= cap:
                self._give_up(spec, st, len(seeds))
            self.step(spec, seeds, roles, cap)
            bar.update(task, completed=min(st.rows, spec.target))

    def _seeds_or_fail(self, spec: SetSpec) -> list[Seed]:
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
                f"{self.cfg.generate.simulation_dir}; the simulation has no usable scenarios"
            )
        return seeds

    def _give_up(self, spec: SetSpec, st: SetState, n_seeds: int) -> None:
        factor = self.cfg.generate.max_attempts_factor
        raise ConfigError(
            f"generator.sets.{spec.name}: {st.rows}/{spec.target} rows after {st.seeds_used} "
            f"seeds (cap: target x generate.max_attempts_factor={factor}); "
            f"{n_seeds} distinct (scenario, persona) seeds were retrieved and the filters "
            f"dropped {dict(st.filtered)}. Simulate more scenarios, raise generate.retrieval.top_k or "
            "generate.max_attempts_factor, loosen filters, or lower the target."
        )

    def step(self, spec: SetSpec, seeds: list[Seed], roles: StepRoles, cap: int) -> None:
        """One step: synthesize a batch, filter it, commit rows then the state that counts them."""
        g, st = self.cfg.generate, self.state.sets[spec.name]
        missing = spec.target - st.rows
        n = min(
            int(g.batch_size), max(1, math.ceil(missing * float(g.oversample))), cap - st.seeds_used
        )
        idx = range(st.seeds_used, st.seeds_used + n)
        batch = [seeds[i % len(seeds)] for i in idx]
        ids = [f"{spec.name}-{self.shard.global_index(i):06d}" for i in idx]
        # Sets get their own sampling streams, stable under reordering of the config. Steps are
        # spaced far apart: a backend seeds its sub-batches with seed + b, and the streams of
        # one step must not repeat another step's (nor another shard's).
        set_offset = int(text_sha256(spec.name)[:6], 16)
        stream = self.shard.global_index(st.steps)
        sample_seed = int(self.cfg.seed) * 1_000_003 + set_offset + 10_007 * stream
        cands = synthesize(
            spec, ids, batch, roles, sample_seed, int(g.max_actions), int(g.max_action_chars)
        )
        vectors = self.encoder.encode([c.instruction for c in cands])
        kept, dropped, surplus = filter_batch(
            cands, vectors, self.checks, self.dedup[spec.kind], spec.allow_refusals, missing
        )
        base_lineage = self.lineage(spec)
        rows = [
            c.to_row(spec.name, spec.domain, {**base_lineage, **c.seed.lineage(), "step": st.steps})
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

    def generate(self) -> None:
        with progress("generate") as bar:
            for spec in self.specs:
                st = self.state.sets[spec.name]
                task = bar.add_task(
                    f"set {spec.name}", total=spec.target, completed=min(st.rows, spec.target)
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


def simulation_input(cfg: DictConfig) -> tuple[SimulationData | None, dict[str, Path]]:
    """The simulate output the sets draw from (None when every set is magpie) and the files
    the manifest records as inputs."""
    if not reads_simulation(dict(cfg.generator.sets.items())):
        return None, {}
    sim = load_simulation(str(cfg.generate.simulation_dir))
    return sim, {"scenarios": sim.dir / "scenarios.jsonl", "agents": sim.agents_file}


def run_generate(cfg: DictConfig, backends: dict[str, LLM] | None = None) -> dict[str, Any]:
    check_stage(cfg, "generate", provided_backends=backends or {})
    sim, inputs = simulation_input(cfg)
    if cfg.generate.get("rejected_model"):
        inputs["rejected_model"] = Path(str(cfg.generate.rejected_model))
    run = open_stage(cfg, "generate")
    roles = make_roles(cfg, backends)
    try:  # a backend that started a server (rejected_backend=vllm) stops it, also on failure
        result = _generate(cfg, run, roles, sim, inputs)
    finally:
        roles.close()
    log.info("generate: %s", result["counts"])
    return {**result, "llm": roles.ledger(), "dir": str(run.dir)}


def _generate(
    cfg: DictConfig, run: StageRun, roles: Roles, sim: SimulationData | None, inputs: dict
) -> dict[str, Any]:
    run.track_llm_spend(roles)
    encoder = Encoder(cfg.embedding.model, cache_dir=cfg.paths.cache_dir)
    gen = Generation(cfg, run, roles, encoder, sim)
    gen.generate()
    result = gen.finalize()
    rejected = rejected_model_record(cfg, roles)
    run.finish(
        result["counts"],
        inputs=inputs,
        extra={
            "llm": roles.ledger(),
            "models": result["models"],
            "stats": result["stats"],
            "sets": result["sets"],
            **({"rejected_model": rejected} if rejected else {}),
        },
    )
    return result
