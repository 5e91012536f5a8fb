"""Per-role LLMs: each role (agent, modulator, summarizer, generator, responder, judge ...)
names a backend and its own sampling defaults in config; backends with the same name are
loaded once per process and shared.

    llm:
      backends:
        smollm2: {_target_: matrix.llm.hf.HFBackend, model: "embedded:smollm2-135m-instruct"}
      roles:
        agent: {backend: smollm2, max_new_tokens: 96, temperature: 0.7}
        judge: {backend: smollm2, max_new_tokens: 8}
      cache: {enabled: true, dir: ${paths.cache_dir}}
      budget: {max_tokens: null, max_cost: null}

Every role gets the same wrappers around its backend: the persistent call cache (only the
misses of a batch go to the backend, as one batch), the per-role ledger and the run's
budget. A backend may carry `prices: {prompt: $, completion: $}` per 1M tokens.

Stages only ever call `roles.get(name).generate(chats, **overrides)`.

Several threads may call `generate` at once (the simulator's `schedule: groups`): the
ledgers are updated under one lock, and a backend that does not declare
`concurrent_calls = True` (an in-process model) takes one call at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from matrix.common.io import read_json, write_json
from matrix.llm.cache import CallCache, batch_keys, model_identity
from matrix.llm.embedded import cache_root
from matrix.llm.errors import BudgetExhausted, ContextOverflow
from matrix.llm.ledger import Budget, Prices, Usage, estimate_prompt_tokens
from matrix.llm.protocol import LLM, Chat, Completion, RawCompleter, Sampling, StreamingLLM

log = logging.getLogger(__name__)

_SAMPLING_KEYS = {f.name for f in fields(Sampling)}
BACKEND_EXTRA_KEYS = ("prices",)  # read by Roles, not passed to the backend constructor

__all__ = ["RoleLLM", "Roles", "Usage"]

# Ledgers (usage, totals, spend file) change under this lock; calls to a backend that cannot
# serve two calls at once go through its own lock.
_LEDGER = threading.RLock()
_BACKEND_LOCKS: dict[int, threading.Lock] = {}


def _backend_lock(backend: LLM) -> threading.Lock | None:
    if getattr(backend, "concurrent_calls", False):
        return None
    with _LEDGER:
        return _BACKEND_LOCKS.setdefault(id(backend), threading.Lock())


@dataclass
class RoleLLM:
    """An LLM bound to a role: the backend plus the role's default sampling, usage, and the
    run-wide cache, budget and totals it shares with the other roles."""

    role: str
    backend: LLM
    sampling: Sampling
    usage: Usage = field(default_factory=Usage)
    prices: Prices = field(default_factory=Prices)
    cache: CallCache | None = None
    budget: Budget = field(default_factory=Budget)
    run_usage: Usage = field(default_factory=Usage)  # shared by every role of a Roles
    on_batch: Callable[[], None] | None = None  # after every batch (Roles records its spend)

    @property
    def name(self) -> str:
        return self.backend.name

    def sampling_for(self, **overrides: Any) -> Sampling:
        unknown = set(overrides) - _SAMPLING_KEYS
        if unknown:
            raise TypeError(
                f"unknown sampling fields {sorted(unknown)}; known: {sorted(_SAMPLING_KEYS)}"
            )
        if "stop" in overrides:
            overrides["stop"] = tuple(overrides["stop"] or ())
        return replace(self.sampling, **overrides)

    def generate(self, chats: Sequence[Chat], **overrides: Any) -> list[Completion]:
        """Complete a batch of chats; keyword overrides replace the role's sampling fields."""
        if not chats:
            return []
        chats = list(chats)
        sampling = self.sampling_for(**overrides)
        t0 = time.perf_counter()
        out: list[Completion | None] = [None] * len(chats)
        keys: list[str] | None = None
        if self.cache is not None:
            keys = batch_keys(model_identity(self.backend.name), chats, sampling)
            hits = self.cache.get_many(keys)
            todo: dict[str, int] = {}  # one backend row per distinct missing key
            for i, k in enumerate(keys):
                if k in hits:
                    out[i] = hits[k]
                else:
                    todo.setdefault(k, i)
            send = list(todo.values())
        else:
            send = list(range(len(chats)))
        try:
            self._call_backend(chats, send, keys, sampling, out)
        finally:
            hits_now = len(chats) - len(send)
            with _LEDGER:
                self.usage.cache_hits += hits_now
                self.run_usage.cache_hits += hits_now
                self._count_batch(len(chats), time.perf_counter() - t0)
        if keys is not None:  # duplicates of a greedy request share its one answer
            first = {k: out[i] for i, k in enumerate(keys) if out[i] is not None}
            out = [first[k] for k in keys]
        return out  # type: ignore[return-value]

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
        """Continue raw text prompts (no chat template, not cached); same sampling rules and
        ledger as `generate`."""
        if not prompts:
            return []
        backend = self._raw()
        sampling = self.sampling_for(**overrides)
        t0 = time.perf_counter()
        out = backend.complete(list(prompts), sampling)
        with _LEDGER:
            for u in (self.usage, self.run_usage):
                u.add_calls(out, self.prices)
            self._count_batch(len(prompts), time.perf_counter() - t0)
        return out

    def _count_batch(self, n_requests: int, seconds: float) -> None:
        """One batch asked of this role: requests, batch size and time, in both ledgers."""
        for u in (self.usage, self.run_usage):
            u.requests += n_requests
            u.batches += 1
            u.max_batch = max(u.max_batch, n_requests)
            u.seconds += seconds
        if self.on_batch is not None:
            self.on_batch()

    def _call_backend(
        self,
        chats: list[Chat],
        send: list[int],
        keys: list[str] | None,
        sampling: Sampling,
        out: list[Completion | None],
    ) -> None:
        # Budget: send the longest run of rows that fits (estimated from the prompt size and
        # max_new_tokens), so the rows paid for are kept (cached) and the stage stops before
        # the first row that would go past the cap. Without a cap this is one batch.
        remaining = send
        while remaining:
            fit, est_p, est_c = 0, 0, 0
            for i in remaining:
                p = estimate_prompt_tokens(chats[i])
                if not self._fits(est_p + p, est_c + sampling.max_new_tokens):
                    break
                est_p, est_c, fit = est_p + p, est_c + sampling.max_new_tokens, fit + 1
            if fit == 0:
                i = remaining[0]
                p = estimate_prompt_tokens(chats[i])
                n = sampling.max_new_tokens
                self.budget.check(self.run_usage, p + n, self.prices.cost(p, n), self.role)
            self._send(chats, remaining[:fit], keys, sampling, out)
            remaining = remaining[fit:]

    def _fits(self, prompt_tokens: int, completion_tokens: int) -> bool:
        try:
            self.budget.check(
                self.run_usage,
                prompt_tokens + completion_tokens,
                self.prices.cost(prompt_tokens, completion_tokens),
                self.role,
            )
        except BudgetExhausted:
            return False
        return True

    def _send(
        self,
        chats: list[Chat],
        batch: list[int],
        keys: list[str] | None,
        sampling: Sampling,
        out: list[Completion | None],
    ) -> None:
        got: dict[int, Completion] = {}

        def record(j: int, c: Completion) -> None:
            # Called as each row is paid for: ledger and cache are never behind the server.
            got[j] = c
            with _LEDGER:
                self.usage.add_calls([c], self.prices)
                self.run_usage.add_calls([c], self.prices)
            if self.cache is not None and keys is not None:
                self.cache.put(keys[batch[j]], c)

        sub = [chats[i] for i in batch]
        lock = _backend_lock(self.backend)
        try:
            if lock is not None:
                lock.acquire()
            if isinstance(self.backend, StreamingLLM):
                result = self.backend.generate_streaming(sub, sampling, record)
            else:
                result = self.backend.generate(sub, sampling)
        except ContextOverflow as e:
            raise (e.at_row(batch[e.row]) if e.row is not None else e) from e
        finally:
            if lock is not None:
                lock.release()
            for j, c in got.items():
                out[batch[j]] = c
        if len(result) != len(sub):
            raise RuntimeError(
                f"backend {self.backend.name} returned {len(result)} completions for "
                f"{len(sub)} chats"
            )
        for j, c in enumerate(result):
            if j not in got:
                record(j, c)
            out[batch[j]] = c


def _usage(d: dict[str, Any]) -> Usage:
    known = {f.name for f in fields(Usage)}
    return Usage(**{k: v for k, v in d.items() if k in known})


def _prices(node: Any) -> Prices:
    if not node:
        return Prices()
    unknown = set(node) - {"prompt", "completion"}
    if unknown:
        raise KeyError(
            f"llm.backends.*.prices has unknown keys {sorted(unknown)}; use prompt and "
            "completion (US$ per 1M tokens)"
        )
    return Prices(float(node.get("prompt", 0.0)), float(node.get("completion", 0.0)))


class Roles:
    """The LLM of every role, built from `llm` config.

    `cache` overrides llm.cache (pass a CallCache, or False to turn it off); `budget`
    overrides llm.budget.
    """

    def __init__(
        self,
        llm_cfg: DictConfig,
        backends: dict[str, LLM] | None = None,
        cache: CallCache | bool | None = None,
        budget: Budget | None = None,
    ):
        self.cfg = llm_cfg
        self._backends: dict[str, LLM] = dict(backends or {})
        self._roles: dict[str, RoleLLM] = {}
        self.cache = self._open_cache(cache)
        self.budget = budget or Budget(**dict(llm_cfg.get("budget") or {}))
        self.total = Usage()  # run-wide totals the budget is checked against
        self._spend_file: Path | None = None
        self._spend_key = ""
        self._carried: dict[str, Usage] = {}  # per-role spend of earlier attempts

    @property
    def provided(self) -> set[str]:
        """The backends handed over in-process (built by the caller, not from config)."""
        return set(self._backends)

    def carry_spend(self, path: str | Path, key: str) -> None:
        """Make the budget span resumes: start from what earlier attempts of the same stage run
        spent (recorded in `path` under the same `key`), and keep `path` current after every
        batch. A different key (another config) starts from zero.

        A SIGKILL loses at most the spend of the batch in flight; its paid rows are in the call
        cache, so the resume gets them as free hits."""
        self._spend_file, self._spend_key = Path(path), key
        if not self._spend_file.exists():
            return
        saved = read_json(self._spend_file)
        if saved.get("key") != key:
            log.info("%s: earlier spend was for another config; counting from zero", path)
            return
        self.total.merge(_usage(saved["total"]))
        for role, d in saved.get("roles", {}).items():
            if role in self._roles:
                self._roles[role].usage.merge(_usage(d))
            else:
                self._carried[role] = _usage(d)
        log.info("LLM spend carried over from earlier attempts: %s tokens", self.total.tokens)

    def _record_spend(self) -> None:
        if self._spend_file is not None:
            write_json(self._spend_file, {"key": self._spend_key, **self.ledger()})

    def _open_cache(self, cache: CallCache | bool | None) -> CallCache | None:
        if isinstance(cache, CallCache):
            return cache
        ccfg = self.cfg.get("cache") or {}
        if cache is False or (cache is None and not ccfg.get("enabled", False)):
            return None
        directory = ccfg.get("dir") or cache_root()
        return CallCache.in_dir(directory)

    def names(self) -> list[str]:
        return list(self.cfg.roles.keys())

    def backend(self, name: str) -> LLM:
        if name not in self._backends:
            if name not in self.cfg.backends:
                raise KeyError(
                    f"llm.backends has no '{name}'; defined: {sorted(self.cfg.backends)}"
                )
            node = OmegaConf.to_container(self.cfg.backends[name], resolve=True)
            for k in BACKEND_EXTRA_KEYS:
                node.pop(k, None)
            self._backends[name] = instantiate(node)
        return self._backends[name]

    def prices(self, name: str) -> Prices:
        """Prices of a backend (llm.backends.<name>.prices), also for backends passed in."""
        node = self.cfg.backends.get(name) if self.cfg.get("backends") else None
        return _prices(node.get("prices") if node is not None else None)

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
            backend = self.backend(backend_name)
            self._roles[role] = RoleLLM(
                role,
                backend,
                Sampling(**rc),
                usage=self._carried.pop(role, None) or Usage(),
                prices=self.prices(backend_name),
                cache=self.cache,
                budget=self.budget,
                run_usage=self.total,
                on_batch=self._record_spend,
            )
        return self._roles[role]

    def adopt(
        self, role: str, backend: LLM, sampling: Sampling, prices: Prices | None = None
    ) -> RoleLLM:
        """Bind a backend built outside `llm.backends` (the evaluate stage's model under test:
        a checkpoint folder, or another role's backend with other sampling) as `role`, with
        the same call cache, budget, run totals and ledger as every configured role."""
        self._roles[role] = RoleLLM(
            role,
            backend,
            sampling,
            usage=self._carried.pop(role, None) or Usage(),
            prices=prices or Prices(),
            cache=self.cache,
            budget=self.budget,
            run_usage=self.total,
            on_batch=self._record_spend,
        )
        return self._roles[role]

    def ledger(self) -> dict[str, Any]:
        """Requests, backend calls, cache hits, tokens and cost per role and in total, for
        manifests and W&B."""
        return {
            "roles": {
                **{r: u.as_dict() for r, u in self._carried.items()},
                **{r: x.usage.as_dict() for r, x in self._roles.items()},
            },
            "total": self.total.as_dict(),
            "budget": {"max_tokens": self.budget.max_tokens, "max_cost": self.budget.max_cost},
        }

    def metrics(self, prefix: str = "llm") -> dict[str, float]:
        """The ledger flattened for W&B (`llm/judge/cache_hits`, `llm/total/cost`, ...)."""
        led = self.ledger()
        flat = {f"{prefix}/total/{k}": v for k, v in led["total"].items()}
        for role, usage in led["roles"].items():
            flat.update({f"{prefix}/{role}/{k}": v for k, v in usage.items()})
        return flat
