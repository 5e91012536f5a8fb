"""Typed records that flow between stages. Rows on disk are these records as JSON objects."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Profile:
    """One real-world-grounded user profile, after field mapping (and anonymization)."""

    id: str
    name: str
    bio: str
    persona: str
    handle: str = ""
    topics: tuple[str, ...] = ()
    posts: tuple[str, ...] = ()

    def describe(self, max_chars: int = 600) -> str:
        text = self.persona or self.bio
        if self.bio and self.bio not in text:
            text = f"{self.bio} {text}"
        return text[:max_chars]


@dataclass
class Agent:
    """A simulated person: profile + LLM-written goal, personality and plan, plus its state."""

    index: int
    profile: Profile
    goal: str = ""
    personality: str = ""
    plan: str = ""
    group: int = -1
    memory: list[str] = field(default_factory=list)
    memory_summary: str = ""
    inbox: list[str] = field(default_factory=list)
    done: bool = False
    done_round: int | None = None

    @property
    def name(self) -> str:
        return self.profile.name

    def to_row(self) -> dict[str, Any]:
        """What dataclasses.asdict gives, a copy, built without its generic deep copy:
        state.json holds every agent each round, and asdict was most of that round's cost.
        The fields are scalars, strings, tuples of strings and lists of strings, so copying
        the lists copies everything mutable."""
        row = {f: getattr(self, f) for f in _AGENT_FIELDS}
        for f, v in row.items():
            if isinstance(v, list):
                row[f] = list(v)
        row["profile"] = {f: getattr(self.profile, f) for f in _PROFILE_FIELDS}
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Agent:
        p = dict(row["profile"])
        p["topics"] = tuple(p.get("topics") or ())
        p["posts"] = tuple(p.get("posts") or ())
        return cls(**{**row, "profile": Profile(**p)})


_AGENT_FIELDS = tuple(f.name for f in fields(Agent))
_PROFILE_FIELDS = tuple(f.name for f in fields(Profile))


@dataclass(frozen=True)
class Event:
    """One agent action in one round, with the routing decision that delivered it."""

    id: str
    round: int
    group: int
    agent: int
    agent_name: str
    action: str
    observers: tuple[int, ...]
    routing: str  # "modulator" | "retry" | "fallback" | "random" | "none"
    routing_reason: str = ""


@dataclass(frozen=True)
class Scenario:
    """A narrative summary of `interval` modulator steps of one group: MATRIX-Gen's unit."""

    id: str
    group: int
    rounds: tuple[int, ...]
    participants: tuple[int, ...]
    participant_names: tuple[str, ...]
    events: tuple[str, ...]
    actions: tuple[str, ...]
    summary: str
