"""Seed sources: what a generator set's candidate rows are written from.

A set names its source as `source: simulation | persona | magpie` (the shipped ones), or as a
block `source: {_target_: my_module.MySource, ...options}` for one defined anywhere: a
`SeedSource` subclass, built by Hydra with its options. The source says which template fields
it fills (checked against the set's prompts before any model loads), whether it reads the
simulate output, and gives the seeds; it may also write the first instructions itself
(Magpie samples them from the chat template alone).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from matrix.common.validation import ConfigError
from matrix.core.shard import Shard
from matrix.gen.inputs import Seed, SimulationData, persona_seeds, simulation_seeds
from matrix.gen.retrieval import mmr
from matrix.llm.embeddings import Encoder
from matrix.llm.protocol import Chat, Completion
from matrix.llm.role_llm import RoleLLM


class SetSpec(Protocol):
    """What a source reads of its set (matrix.gen.synthesis.SetSpec has these and more)."""

    name: str
    need_text: str  # the set's need, as a sentence
    retrieval: Mapping[str, Any]  # generate.retrieval with the set's own block on top


@dataclass(frozen=True)
class SeedContext:
    """What a source may draw on: the simulate output (None when no selected set reads it),
    the sentence encoder, and the shard this process owns."""

    sim: SimulationData | None
    encoder: Encoder
    shard: Shard


class SeedSource:
    """The protocol: class attributes say what the source needs and fills; `seeds` gives the
    seeds of one set; `first_instructions` writes one first request per seed."""

    name: ClassVar[str] = ""  # each row's lineage `source`
    fields: ClassVar[tuple[str, ...]] = ("need",)  # the instruction template's fields it fills
    reads_simulation: ClassVar[bool] = False  # needs generate.simulation_dir
    instruction_prompt: ClassVar[bool] = True  # the set needs prompts.instruction

    def seeds(self, ctx: SeedContext, spec: SetSpec) -> list[Seed]:
        raise NotImplementedError

    def first_instructions(
        self,
        generator: RoleLLM,
        seeds: Sequence[Seed],
        chat_for: Callable[[Seed], Chat],
        sample_seed: int,
    ) -> list[Completion]:
        """One batched generator call over the rendered instruction prompts."""
        return generator.generate([chat_for(s) for s in seeds], seed=sample_seed)


class SimulationSource(SeedSource):
    """(scenario, participant) pairs: the scenarios closest to the set's need, diversified
    by maximal marginal relevance (the paper's scenario retrieval)."""

    name = "simulation"
    fields = ("need", "name", "persona", "goal", "others", "scenario", "actions")
    reads_simulation = True

    def seeds(self, ctx: SeedContext, spec: SetSpec) -> list[Seed]:
        assert ctx.sim is not None
        r = spec.retrieval
        summaries = [s["summary"] for s in ctx.sim.scenarios]
        vecs = ctx.encoder.encode([spec.need_text, *summaries])
        top_k = len(summaries) if r["top_k"] is None else int(r["top_k"])
        # Every shard ranks all scenarios, then keeps its own: the shards together use the
        # scenarios an unsharded run retrieves, each scenario in one shard only.
        order = mmr(vecs[0], vecs[1:], top_k, float(r["mmr_lambda"]))
        per = r["personas_per_scenario"]
        owned = [i for i in order if ctx.shard.owns(i)]
        seeds = simulation_seeds(ctx.sim, owned, None if per is None else int(per))
        return in_stream(seeds, int(r["seed_stream"]), int(r["seed_streams"]))


class PersonaSource(SeedSource):
    """Each simulated agent's persona and goal, without a scenario (an ablation)."""

    name = "persona"
    fields = ("need", "name", "persona", "goal", "others")
    reads_simulation = True

    def seeds(self, ctx: SeedContext, spec: SetSpec) -> list[Seed]:
        assert ctx.sim is not None
        return ctx.shard.slice(persona_seeds(ctx.sim))


class MagpieSource(SeedSource):
    """No seed at all: the generator completes its chat template's user-turn prefix
    (Magpie), so every candidate is one raw completion of the same prefix."""

    name = "magpie"
    instruction_prompt = False

    def seeds(self, ctx: SeedContext, spec: SetSpec) -> list[Seed]:
        return [Seed("magpie")]

    def first_instructions(
        self,
        generator: RoleLLM,
        seeds: Sequence[Seed],
        chat_for: Callable[[Seed], Chat],
        sample_seed: int,
    ) -> list[Completion]:
        prefix = generator.pre_query_prefix()
        return generator.complete([prefix] * len(seeds), seed=sample_seed)


def in_stream(seeds: list[Seed], stream: int, streams: int) -> list[Seed]:
    """The seeds of one of `streams` disjoint streams, split by a stable hash of each seed's
    key (its scenario and persona), so sets on different streams never share a seed whatever
    their needs rank first (the 20K mix: SFT on stream 0, DPO on stream 1)."""
    if streams <= 1:
        return seeds
    return [
        s
        for s in seeds
        if int.from_bytes(hashlib.sha256(s.key.encode()).digest()[:8], "big") % streams == stream
    ]


# The shipped sources, by the short names the generator YAMLs use.
SOURCES: dict[str, type[SeedSource]] = {
    c.name: c for c in (SimulationSource, PersonaSource, MagpieSource)
}


def build_source(value: Any) -> SeedSource:
    """The source a set names: a shipped name, or a `_target_` block (built by Hydra).
    ValueError says why `value` names none."""
    if isinstance(value, str):
        if value not in SOURCES:
            raise ValueError(
                f"{value!r} is not a seed source; use one of {sorted(SOURCES)}, or a block "
                "with `_target_:` naming a matrix.gen.sources.SeedSource subclass"
            )
        return SOURCES[value]()
    if isinstance(value, Mapping) and "_target_" in value:
        from hydra.utils import instantiate

        block = {str(k): v for k, v in value.items()}
        try:
            source = instantiate(block)
        except Exception as e:  # noqa: BLE001 - Hydra wraps import and argument errors alike
            raise ValueError(f"cannot build {block['_target_']!r}: {e}") from e
        if not isinstance(source, SeedSource):
            raise ValueError(f"{block['_target_']!r} is not a matrix.gen.sources.SeedSource")
        return source
    raise ValueError(f"a source name ({', '.join(sorted(SOURCES))}) or a `_target_` block")


def seed_source(value: Any, key: str) -> SeedSource:
    """`build_source`, its error naming the config key."""
    try:
        return build_source(value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from e
