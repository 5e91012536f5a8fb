"""The generate stage's typed config schema: `generate` (conf/generate_settings.yaml) and the
sets of `generator` (conf/generator/). Checked against the composed config before any model
loads (matrix.core.value_check.check_schemas); a new option is one YAML line and one field
here. What needs more than the values (a need's name, template fields, the simulation folder,
the rejected model) is checked by matrix.gen.config.validate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, get_args

from matrix.common.schema import AtLeastOne, Count, Fraction, Natural, Range
from matrix.core.settings import LLMStage, Prompt

Kind = Literal["sft", "dpo"]  # sft: `messages` rows | dpo: prompt / chosen / rejected rows
KINDS = get_args(Kind)


@dataclass(frozen=True)
class Retrieval:
    """generate.retrieval, and a set's own `retrieval:` merged over it."""

    top_k: Count | None  # null: every scenario, ranked
    mmr_lambda: Fraction
    personas_per_scenario: Count | None
    seed_streams: Count
    seed_stream: Natural

    @staticmethod
    def rules(block: dict) -> list[tuple[str, str]]:
        if block["seed_stream"] < block["seed_streams"]:
            return []
        return [
            (
                "seed_stream",
                f"{block['seed_stream']} must be in [0, seed_streams={block['seed_streams']})",
            )
        ]


@dataclass(frozen=True)
class Filters:
    near_dup_threshold: Annotated[float, Range(0, 1, open_min=True)]
    min_instruction_chars: Natural
    max_instruction_chars: Count
    min_response_chars: Natural
    max_response_chars: Count
    drop_truncated: bool
    language: str | None  # ISO 639-1 code; null: no check
    refusal_patterns: list[str]

    @staticmethod
    def rules(block: dict) -> list[tuple[str, str]]:
        if block["max_instruction_chars"] > block["min_instruction_chars"]:
            return []
        return [("max_instruction_chars", "must be above min_instruction_chars")]


@dataclass(frozen=True)
class Generate:
    simulation_dir: str
    rejected_model: str | None
    # how rejected_model runs: a backend block (conf/rejected_backend/), checked against its
    # _target_ by matrix.core.config_check
    rejected_backend: dict
    limit: Count | None
    run_sets: list[str] | None
    batch_size: Count
    oversample: AtLeastOne
    max_attempts_factor: AtLeastOne
    export_hf: bool
    max_actions: Count
    max_action_chars: Count
    needs: dict[str, str]
    retrieval: Retrieval
    filters: Filters


@dataclass(frozen=True)
class SetPrompts:
    """Which prompts a set needs depends on its source and turns (matrix.gen.config)."""

    instruction: Prompt | None = None
    response: Prompt | None = None
    follow_up: Prompt | None = None


@dataclass(frozen=True)
class GeneratorSet:
    kind: Kind
    domain: str
    # a shipped seed source (matrix.gen.sources.SOURCES) or a `_target_` block naming one
    source: Literal["simulation", "persona", "magpie"] | dict
    need: str  # a key of generate.needs or a sentence of its own
    target: Count
    prompts: SetPrompts
    turns: Count = 1
    allow_refusals: bool = False
    # keys of generate.retrieval; checked merged over it (matrix.gen.config.validate)
    retrieval: dict | None = None

    @staticmethod
    def rules(block: dict) -> list[tuple[str, str]]:
        if block["kind"] == "dpo" and block.get("turns", 1) > 1:
            return [("turns", "DPO sets are single-turn (prompt, chosen, rejected); use turns: 1")]
        return []


@dataclass(frozen=True)
class Generator:
    name: str
    sets: dict[str, GeneratorSet]


@dataclass(frozen=True)
class GenerateSettings(LLMStage):
    generate: Generate
    generator: Generator
