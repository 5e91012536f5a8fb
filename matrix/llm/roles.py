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

Every role gets the same wrappers around its backend (`matrix.llm.role_llm.build_role_llm`):
the persistent call cache (only the misses of a batch go to the backend, as one batch), the
per-role ledger and the run's budget. A backend may carry `prices: {prompt: $, completion: $}`
per 1M tokens. `Roles` builds each role's LLM from config, owns what the roles share (cache,
budget, run totals) and keeps the spend file that makes the budget span resumes.

Stages only ever call `roles.get(name).generate(chats, **overrides)`.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from matrix.common.io import read_json, write_json
from matrix.llm.cache import CallCache
from matrix.llm.embedded import cache_root
from matrix.llm.ledger import Budget, EndpointUsage, Prices, Usage
from matrix.llm.protocol import LLM, Sampling
from matrix.llm.role_llm import SAMPLING_KEYS, RoleLLM, build_role_llm
from matrix.llm.wrappers.ledgered import RoleLedger

log = logging.getLogger(__name__)

BACKEND_EXTRA_KEYS = ("prices",)  # read by Roles, not passed to the backend constructor

__all__ = ["Roles"]


def _usage(d: dict[str, Any], kind: type = Usage) -> Any:
    known = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in d.items() if k in known})


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


def _endpoints_of(backend: Any) -> dict[str, EndpointUsage]:
    usage = getattr(backend, "endpoint_usage", None)
    return usage() if callable(usage) else {}


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
        self._carried_endpoints: dict[str, EndpointUsage] = {}  # per endpoint, likewise
        # each backend bound to a role, with what its endpoints had done before (a backend
        # handed over by an earlier pipeline step has counted that step's requests)
        self._endpoints_before: dict[int, tuple[LLM, dict[str, EndpointUsage]]] = {}
        for b in self._backends.values():
            self._watch_endpoints(b)
        self._built: list[str] = []  # backends built here from config (closed by close())

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
        for url, d in saved.get("endpoints", {}).items():
            self._carried_endpoints[url] = _usage(d, EndpointUsage)
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
            self._watch_endpoints(self._backends[name])
            self._built.append(name)
        return self._backends[name]

    def built(self, name: str) -> LLM | None:
        """The backend `name` if it was built (or handed in), else None; builds nothing."""
        return self._backends.get(name)

    def close(self) -> None:
        """Release what the backends built from config hold (a server a backend started,
        matrix.llm.served_folder); backends handed in stay the caller's. Safe to call twice."""
        for name in self._built:
            close = getattr(self._backends[name], "close", None)
            if callable(close):
                close()

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
            unknown = set(rc) - SAMPLING_KEYS
            if unknown:
                raise KeyError(
                    f"llm.roles.{role} has unknown keys {sorted(unknown)}; "
                    f"allowed: backend, {', '.join(sorted(SAMPLING_KEYS))}"
                )
            if "stop" in rc:
                rc["stop"] = tuple(rc["stop"] or ())
            self._bind(role, self.backend(backend_name), Sampling(**rc), self.prices(backend_name))
        return self._roles[role]

    def adopt(
        self, role: str, backend: LLM, sampling: Sampling, prices: Prices | None = None
    ) -> RoleLLM:
        """Bind a backend built outside `llm.backends` (the evaluate stage's model under test:
        a checkpoint folder, or another role's backend with other sampling) as `role`, with
        the same call cache, budget, run totals and ledger as every configured role."""
        return self._bind(role, backend, sampling, prices or Prices())

    def _watch_endpoints(self, backend: LLM) -> None:
        if id(backend) not in self._endpoints_before:
            self._endpoints_before[id(backend)] = (backend, _endpoints_of(backend))

    def _bind(self, role: str, backend: LLM, sampling: Sampling, prices: Prices) -> RoleLLM:
        self._watch_endpoints(backend)
        ledger = RoleLedger(
            usage=self._carried.pop(role, None) or Usage(),
            run_usage=self.total,
            prices=prices,
            on_batch=self._record_spend,
        )
        self._roles[role] = build_role_llm(
            role, backend, sampling, ledger=ledger, cache=self.cache, budget=self.budget
        )
        return self._roles[role]

    def endpoint_usage(self) -> dict[str, EndpointUsage]:
        """What each endpoint of the OpenAI-compatible backends did in this run, earlier
        attempts included, by URL."""
        out = {
            url: _usage(u.as_dict(), EndpointUsage) for url, u in self._carried_endpoints.items()
        }
        for backend, before in self._endpoints_before.values():
            for url, u in _endpoints_of(backend).items():
                done = u.minus(before[url]) if url in before else u
                out.setdefault(url, EndpointUsage()).merge(done)
        return out

    def ledger(self) -> dict[str, Any]:
        """Requests, backend calls, cache hits, tokens and cost per role and in total, and
        (with OpenAI-compatible backends) requests, tokens and failures per endpoint, for
        manifests and W&B."""
        endpoints = self.endpoint_usage()
        return {
            "roles": {
                **{r: u.as_dict() for r, u in self._carried.items()},
                **{r: x.usage.as_dict() for r, x in self._roles.items()},
            },
            "total": self.total.as_dict(),
            "budget": {"max_tokens": self.budget.max_tokens, "max_cost": self.budget.max_cost},
            **({"endpoints": {u: x.as_dict() for u, x in endpoints.items()}} if endpoints else {}),
        }

    def metrics(self, prefix: str = "llm") -> dict[str, float]:
        """The ledger flattened for W&B (`llm/judge/cache_hits`, `llm/total/cost`, ...)."""
        led = self.ledger()
        flat = {f"{prefix}/total/{k}": v for k, v in led["total"].items()}
        for role, usage in led["roles"].items():
            flat.update({f"{prefix}/{role}/{k}": v for k, v in usage.items()})
        return flat
