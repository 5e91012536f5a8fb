"""Per-role LLMs: each role (agent, modulator, summarizer, generator, responder, judge ...)
names a backend and its own sampling defaults in config; backends with the same name are
loaded once per process and shared.

    llm:
      backends:
        smollm2: {_target_: matrix.llm.hf.HFBackend, model: "embedded:smollm2-135m-instruct"}
      roles:
        agent: {backend: smollm2, max_new_tokens: 96, temperature: 0.7}
        judge: {backend: smollm2, max_new_tokens: 8}

Stages only ever call `roles.get(name).generate(chats, **overrides)`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from matrix.llm.protocol import LLM, Chat, Completion, RawCompleter, Sampling

log = logging.getLogger(__name__)

_SAMPLING_KEYS = {f.name for f in fields(Sampling)}


@dataclass
class Usage:
    calls: int = 0
    batches: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    max_batch: int = 0

    def add(self, completions: Sequence[Completion], seconds: float) -> None:
        self.calls += len(completions)
        self.batches += 1
        self.prompt_tokens += sum(c.prompt_tokens for c in completions)
        self.completion_tokens += sum(c.completion_tokens for c in completions)
        self.seconds += seconds
        self.max_batch = max(self.max_batch, len(completions))

    def as_dict(self) -> dict[str, float]:
        return {
            "calls": self.calls,
            "batches": self.batches,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 3),
            "max_batch": self.max_batch,
        }


@dataclass
class RoleLLM:
    """An LLM bound to a role: the backend plus the role's default sampling and usage."""

    role: str
    backend: LLM
    sampling: Sampling
    usage: Usage = field(default_factory=Usage)

    @property
    def name(self) -> str:
        return self.backend.name

    def generate(self, chats: Sequence[Chat], **overrides: Any) -> list[Completion]:
        """Complete a batch of chats; keyword overrides replace the role's sampling fields."""
        if not chats:
            return []
        sampling = self._sampling(overrides)
        t0 = time.perf_counter()
        out = self.backend.generate(list(chats), sampling)
        self.usage.add(out, time.perf_counter() - t0)
        return out

    def _raw(self) -> RawCompleter:
        if not isinstance(self.backend, RawCompleter):
            raise TypeError(
                f"llm.roles.{self.role}: backend {self.name} cannot continue raw text "
                "(needed by Magpie-style sampling); use a local HF backend for this role"
            )
        return self.backend

    def pre_query_prefix(self) -> str:
        return self._raw().pre_query_prefix()

    def complete(self, prompts: Sequence[str], **overrides: Any) -> list[Completion]:
        """Continue raw text prompts (no chat template); same sampling rules as `generate`."""
        if not prompts:
            return []
        backend = self._raw()
        sampling = self._sampling(overrides)
        t0 = time.perf_counter()
        out = backend.complete(list(prompts), sampling)
        self.usage.add(out, time.perf_counter() - t0)
        return out

    def _sampling(self, overrides: dict[str, Any]) -> Sampling:
        unknown = set(overrides) - _SAMPLING_KEYS
        if unknown:
            raise TypeError(
                f"unknown sampling fields {sorted(unknown)}; known: {sorted(_SAMPLING_KEYS)}"
            )
        if "stop" in overrides:
            overrides["stop"] = tuple(overrides["stop"])
        return replace(self.sampling, **overrides)


class Roles:
    def __init__(self, llm_cfg: DictConfig, backends: dict[str, LLM] | None = None):
        self.cfg = llm_cfg
        self._backends: dict[str, LLM] = dict(backends or {})
        self._roles: dict[str, RoleLLM] = {}

    def names(self) -> list[str]:
        return list(self.cfg.roles.keys())

    def backend(self, name: str) -> LLM:
        if name not in self._backends:
            if name not in self.cfg.backends:
                raise KeyError(
                    f"llm.backends has no '{name}'; defined: {sorted(self.cfg.backends)}"
                )
            self._backends[name] = instantiate(self.cfg.backends[name])
        return self._backends[name]

    def get(self, role: str) -> RoleLLM:
        if role not in self._roles:
            if role not in self.cfg.roles:
                raise KeyError(
                    f"llm.roles has no '{role}'; defined: {sorted(self.cfg.roles)}. Add "
                    f"llm.roles.{role}={{backend: ..., max_new_tokens: ...}}"
                )
            rc = OmegaConf.to_container(self.cfg.roles[role], resolve=True)
            backend_name = rc.pop("backend")
            unknown = set(rc) - _SAMPLING_KEYS
            if unknown:
                raise KeyError(
                    f"llm.roles.{role} has unknown keys {sorted(unknown)}; "
                    f"allowed: backend, {', '.join(sorted(_SAMPLING_KEYS))}"
                )
            if "stop" in rc:
                rc["stop"] = tuple(rc["stop"] or ())
            self._roles[role] = RoleLLM(role, self.backend(backend_name), Sampling(**rc))
        return self._roles[role]

    def ledger(self) -> dict[str, dict[str, float]]:
        """Token and call totals per role, for manifests and W&B."""
        per_role = {r: x.usage.as_dict() for r, x in self._roles.items()}
        total = Usage()
        for x in self._roles.values():
            u = x.usage
            total.calls += u.calls
            total.batches += u.batches
            total.prompt_tokens += u.prompt_tokens
            total.completion_tokens += u.completion_tokens
            total.seconds += u.seconds
            total.max_batch = max(total.max_batch, u.max_batch)
        return {"roles": per_role, "total": total.as_dict()}
