"""Before any work: can every model a stage will call be reached?

`check_config` (matrix.core.config_check) runs a `ModelCheck` for the stage it is about to run (the
pipeline: for every step it will run), so a missing server, model folder or API key fails in seconds, naming the command or
variable that fixes it, instead of after hours of simulation:

- an OpenAI-compatible backend with a key variable (`api_key_env`, a hosted API): the
  variable is set. The endpoint is not called: the key's validity shows on the first request
  and a hosted API is not worth a request per stage;
- an OpenAI-compatible backend without one (a server the user runs: vLLM, SGLang ...):
  `GET <base_url>/models` answers within `llm.preflight.timeout` seconds and lists the
  backend's model; with several endpoints (`base_urls`), every one is asked, the log names
  the up and the down ones, and it is a problem only when none is up;
- a local backend (transformers, vLLM's offline engine): its model is embedded, a folder, or
  a hub id already in the Hugging Face cache (hubs may be unreachable);
- the generate stage's `generate.rejected_model` served by vLLM (`rejected_backend=vllm`): the
  server's virtualenv is installed, or the server at its `base_url` serves that folder;
- the train stage: `model.path` likewise, unless it lies under `paths.runs_dir` (a model an
  earlier step of the same pipeline writes; train's own preflight checks it when it starts).

Only the roles the stage calls with its config are checked (each stage says which: the
`roles_ref` of its record in matrix.core.registry, read by the caller), so a hosted judge's
key is not asked for by the simulate stage. Nothing here imports a stage.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf

from matrix.common.validation import ConfigError, ConfigProblems
from matrix.llm.embedded import EMBEDDED_PREFIX
from matrix.llm.endpoints import parse_endpoints
from matrix.llm.local_hosts import is_local

log = logging.getLogger(__name__)

_OPENAI = "matrix.llm.openai_backend.OpenAIBackend"
_LOCAL = ("matrix.llm.hf.HFBackend", "matrix.llm.vllm_backend.VLLMBackend")
_SERVED = "matrix.llm.served_folder.ServedFolder"


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def serve_hint(model: str, base_url: str) -> str:
    """The command that starts an OpenAI-compatible server for `model` at `base_url`."""
    port = urlsplit(base_url).port or 8000
    return (
        f"start one with `make llm-server MODEL=<HF folder of the model> "
        f"SERVED_NAME={model} PORT={port}` (or `python -m matrix.llm.server --model-dir "
        f"<HF folder> --served-name {model} --port {port}`)"
    )


def local_model_dir(spec: str) -> Path | None:
    """The folder behind a model spec (model.path, a local backend's model): a local dir, or a
    hub id already in the Hugging Face cache (hubs may be unreachable); None if neither."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return p
    if p.is_absolute() or spec.startswith((".", "~")) or spec.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(spec, "config.json")
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def model_folder_problem(spec: str) -> str | None:
    """Why a model spec (embedded:NAME, folder or hub id) cannot be loaded here, or None."""
    if spec.startswith(EMBEDDED_PREFIX):
        return None
    if local_model_dir(spec) is not None:
        return None
    if Path(spec).expanduser().is_absolute() or spec.startswith((".", "~")):
        return f"model folder {spec} does not exist; point it at a Hugging Face model folder"
    return (
        f"{spec} is neither a local folder nor in the Hugging Face cache: download it "
        f"(`huggingface-cli download {spec}`) or give the folder's path"
    )


class Probe:
    """Endpoint answers, asked once per base_url and key variable (several roles and steps
    share one server)."""

    def __init__(self, timeout: float):
        self.timeout = float(timeout)
        self._seen: dict[tuple[str, str | None], list[str] | str] = {}

    def models(self, base_url: str, api_key_env: str | None) -> list[str] | str:
        """The served model names, or the reason none could be listed."""
        key = (base_url, api_key_env)
        if key not in self._seen:
            self._seen[key] = self._ask(base_url, api_key_env)
        return self._seen[key]

    def _ask(self, base_url: str, api_key_env: str | None) -> list[str] | str:
        headers = {}
        if api_key_env and os.environ.get(api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[api_key_env]}"
        import httpx  # here: a bare training machine (make gpu-check) may lack it

        try:
            r = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=self.timeout)
        except httpx.HTTPError as e:
            return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if r.status_code in (401, 403):  # up, but refuses the key: say what it answered
            return f"HTTP {r.status_code} on GET /models: {r.text.strip()[:200]}"
        if r.status_code != 200:
            return f"HTTP {r.status_code} on GET /models"
        try:
            return sorted(str(m["id"]) for m in r.json().get("data", []))
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"HTTP {r.status_code} on GET /models, but not a model list"


def _endpoint_problem(
    url: str, model: str, env: str | None, probe: Probe, key: str
) -> tuple[str, str] | None:
    """(key, message) of what keeps the endpoint at `url` from serving `model`, or None. A
    hosted endpoint (a key variable, not this machine) is not called: only its key is."""
    if env and not is_local(url):
        if os.environ.get(env):
            return None
        return (
            f"{key}.api_key_env",
            f"{env} is not set: export it (`export {env}=...`, the key for {url}; keys are "
            "never read from config files)",
        )
    served = probe.models(url, env)
    if isinstance(served, str) and served.startswith(("HTTP 401", "HTTP 403")):
        return (
            f"{key}.api_key_env",
            f"the server at {url} refused the API key from ${env} ({served}): set {env} to a "
            "key it accepts",
        )
    if isinstance(served, str) and served.startswith("HTTP"):
        return (
            f"{key}.base_url",
            f"the server at {url} does not list its models ({served}): see its log, or "
            f"restart it: {serve_hint(model, url)}",
        )
    if isinstance(served, str):
        return (
            f"{key}.base_url",
            f"no server at {url} ({served}): {serve_hint(model, url)}, or point "
            f"{key}.base_url at a running OpenAI-compatible server",
        )
    if served and model not in served:
        return (
            f"{key}.model",
            f"the server at {url} serves {', '.join(served)}, not '{model}': restart it with "
            f"SERVED_NAME={model}, or set {key}.model to a served name",
        )
    return None


def _check_openai(node: dict, key: str, probe: Probe, add: Callable[[str, str], None]) -> None:
    """One endpoint (`base_url`): its problem. Several (`base_urls`): every one is asked and
    the log says which are up; a wrong model or key is a problem, a down endpoint only when
    none is up (the backend takes a down one back when it answers)."""
    model, env = str(node.get("model")), node.get("api_key_env", "OPENAI_API_KEY")
    try:
        specs = parse_endpoints(
            str(node.get("base_url", "https://api.openai.com/v1")),
            node.get("base_urls"),
            int(node.get("max_concurrency", 16)),
            key,
        )
    except ConfigError as e:
        add(f"{key}.base_urls", str(e))
        return
    found = {e.url: _endpoint_problem(e.url, model, env, probe, key) for e in specs}
    if len(specs) == 1:
        if found[specs[0].url]:
            add(*found[specs[0].url])
        return
    down = {u: p for u, p in found.items() if p and p[0] == f"{key}.base_url"}
    for p in found.values():
        if p and p[0] != f"{key}.base_url":
            add(*p)
    up = [u for u, p in found.items() if p is None]
    if not up and down:
        add(
            f"{key}.base_urls",
            f"none of its {len(specs)} endpoints answers: "
            + "; ".join(p[1] for p in down.values()),
        )
    elif down:
        log.warning(
            "%s: %d of %d endpoints up (%s); down: %s. The stage runs on the up ones and takes "
            "a down one back when it answers.",
            key,
            len(up),
            len(specs),
            ", ".join(up),
            "; ".join(p[1] for p in down.values()),
        )
    else:
        log.info("%s: all %d endpoints up: %s", key, len(specs), ", ".join(up))


class ModelCheck:
    """Checks the models of one or more stages (the steps of a pipeline) and reports each
    problem once, with every role that needs the model; see the module doc."""

    def __init__(self, timeout: float = 10.0):
        self.probe = Probe(timeout)
        self._found: dict[str, tuple[str, list[str]]] = {}  # key -> (message, roles)

    def _add(self, key: str, msg: str, roles: list[str]) -> None:
        _, seen = self._found.setdefault(key, (msg, []))
        seen.extend(r for r in roles if r not in seen)

    def stage(
        self, cfg: DictConfig, stage: str, calls: list[str], skip: set[str] | None = None
    ) -> ModelCheck:
        """Check the models of the roles `calls` of `stage` (what its config calls, as the
        stage says: matrix.core.registry's roles_ref); backends named in `skip` were handed
        over in-process."""
        backends = _get(cfg, "llm.backends") or {}
        roles = _get(cfg, "llm.roles") or {}
        used: dict[str, list[str]] = {}
        for role in calls:
            rc = roles.get(role)
            b = rc.get("backend") if rc is not None else None
            if b is not None and b in backends and b not in (skip or set()):
                # an unknown backend is check_config's
                used.setdefault(str(b), []).append(role)
        for name, for_roles in used.items():
            node = OmegaConf.to_container(backends[name], resolve=True)
            key = f"llm.backends.{name}"

            def add(k: str, msg: str, for_roles: list[str] = for_roles) -> None:
                self._add(k, msg, for_roles)

            target = node.get("_target_")
            if target == _OPENAI:
                _check_openai(node, key, self.probe, add)
            elif target in _LOCAL:
                problem = model_folder_problem(str(node.get("model")))
                if problem:
                    add(f"{key}.model", problem)
        if stage == "train":
            problem = _train_model_problem(cfg)
            if problem:
                self._add("model.path", problem, [])
        if stage == "generate":
            for problem in _rejected_server_problems(cfg):
                self._add("generate.rejected_backend", problem, ["rejecter"])
        return self

    def report(self, p: ConfigProblems) -> None:
        for key, (msg, roles) in self._found.items():
            p.add(key, f"{msg} [roles: {', '.join(roles)}]" if roles else msg)


def _rejected_server_problems(cfg: DictConfig) -> list[str]:
    """generate.rejected_model served by vLLM (rejected_backend=vllm): the server's virtualenv
    is there, or the user's server at base_url serves the folder."""
    folder, node = _get(cfg, "generate.rejected_model"), _get(cfg, "generate.rejected_backend")
    if folder is None or node is None or node.get("_target_") != _SERVED:
        return []
    from matrix.llm.served_folder import serving_problems  # imports the server module

    node = OmegaConf.to_container(node, resolve=True)
    return serving_problems(node, str(folder))


def _train_model_problem(cfg: DictConfig) -> str | None:
    path = _get(cfg, "model.path")
    if path is None or _get(cfg, "model.init") == "random":
        return None
    runs = _get(cfg, "paths.runs_dir")
    if runs is not None:
        try:
            Path(str(path)).expanduser().resolve().relative_to(Path(str(runs)).resolve())
            return None  # an earlier step writes it; train's preflight checks it at its start
        except ValueError:
            pass
    return model_folder_problem(str(path))
