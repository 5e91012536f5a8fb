"""The simulate stage's typed config schema: `simulation`, `scenario`, `population`, `agent`
(conf/simulate_settings.yaml, conf/population/, conf/agent/). Checked against the composed
config before any model loads (matrix.core.value_check.check_schemas); a new option is one
YAML line and one field here. Of `communication`, only the grouping keys every mode's setup
reads are typed (`Grouping`); the rest is left open: its modes are components."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from matrix.common.schema import Count, Natural
from matrix.core.settings import LLMStage, Prompt


@dataclass(frozen=True)
class Memory:
    max_items: Count  # memories kept verbatim before the oldest are summarized
    keep: Natural  # memories left verbatim after a summarization


@dataclass(frozen=True)
class Simulation:
    max_rounds: Count
    target_scenarios: Count | None
    memory: Memory
    revise_plan_every: Natural  # 0: never
    goal_check_every: Natural  # 0: never
    inbox_max: Count
    schedule: Literal["lockstep", "groups"]


@dataclass(frozen=True)
class Scenario:
    interval: Count
    flush_partial: bool
    profile_chars: Count
    prompt: Prompt


@dataclass(frozen=True)
class Population:
    path: str
    format: Literal["auto", "jsonl", "csv"]
    fields: dict[str, str | None]  # our field -> the file's column (checked against the file)
    size: Count | None  # null: everyone
    sample_seed: int
    on_error: Literal["skip", "fail"]
    anonymize: Literal["rules", "llm", "none"]
    min_age: Natural | None
    max_chars: Count
    max_line_bytes: Count | None = None


@dataclass(frozen=True)
class AgentPrompts:
    anonymize: Prompt
    goal: Prompt
    personality: Prompt
    plan: Prompt
    revise_plan: Prompt
    act_without_observation: Prompt
    act_with_observation: Prompt
    memory_summary: Prompt
    goal_check: Prompt


@dataclass(frozen=True)
class Agent:
    prompts: AgentPrompts


@dataclass(frozen=True)
class Grouping:
    """The `communication` keys the stage's grouping reads (matrix.sim.grouping); `k` is
    an integer or 'auto', checked in matrix.sim.run.validate."""

    size_min: Count
    size_max: Count
    # populations up to this size: constrained K-means; above: balanced bisection
    exact_grouping_max: Natural = 2000


@dataclass(frozen=True)
class SimulateSettings(LLMStage):
    simulation: Simulation
    scenario: Scenario
    population: Population
    agent: Agent
    communication: Grouping  # other keys: the mode's own, checked by its class (run.validate)
