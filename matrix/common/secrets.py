"""Keeping API keys and other secrets out of everything a run prints or writes about itself.

One rule for names, one for values, used everywhere:

- A config key (or an environment variable's name) names a secret when its last word is
  `key`, `apikey`, `token`, `secret`, `password`, `passwd`, `passphrase`, `credential(s)`
  or `auth(orization)` (`api_key`, `hf_token`, `client_secret`, `OPENAI_API_KEY`), except a
  `key` or `token` that says what kind of non-secret it is (`sort_key`, `cache_key`,
  `pad_token`, `eos_token`). The last word decides, so `max_tokens`, `max_new_tokens`,
  `tokenizer`, `num_key_value_heads`, `key_by` and `api_key_env` (the *name* of a variable)
  are not secrets. `tests/common/test_secrets_and_files.py` runs the rule over every key
  defined under conf/.
- A secret value is: a string under such a key in the config or in a command-line override
  (`+llm.backends.api.api_key=...`, `hydra.job.env_set.OPENAI_API_KEY=...`); the value of the
  environment variable that a `*_env` key names (`api_key_env: OPENAI_API_KEY`); and the value
  of any environment variable whose own name names a secret (`HF_TOKEN`). Values shorter than
  `MIN_SECRET_CHARS` are not scrubbed from free text (they would mangle ordinary words; no
  real key is that short). `Bearer <credential>` is masked whatever the credential (12+ chars).

`redact` masks a config container by key (manifests, the W&B config); `scrub` masks known
secret values in free text. `matrix.common.secret_guard` applies them to everything a process
logs, prints and saves about its run.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

MASK = "***"
MIN_SECRET_CHARS = 8

_SECRET_WORDS = frozenset(
    {
        "key",
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "passphrase",
        "credential",
        "credentials",
        "auth",
        "authorization",
    }
)
# `<word>_key` / `<word>_token` that name a non-secret: lookup keys and a tokenizer's tokens.
_PLAIN_KEY_KINDS = frozenset(
    {
        "sort",
        "cache",
        "group",
        "join",
        "dict",
        "map",
        "lookup",
        "hash",
        "id",
        "row",
        "field",
        "column",
        "metric",
        "index",
        "partition",
        "primary",
        "foreign",
        "shard",
        "dedup",
        "order",
        "seed",
        "prompt",
        "text",
        "public",
    }
)
_PLAIN_TOKEN_KINDS = frozenset(
    {
        "pad",
        "eos",
        "bos",
        "unk",
        "sep",
        "cls",
        "mask",
        "start",
        "end",
        "stop",
        "special",
        "image",
        "audio",
        "video",
        "placeholder",
        "bot",
        "eot",
    }
)
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_BEARER = re.compile(r"\b(Bearer)(\s+)[A-Za-z0-9._~+/=-]{12,}")
_OVERRIDE = re.compile(r"^[+~]{0,2}(?P<key>[A-Za-z0-9_.@/-]+?)=(?P<value>.*)$", re.S)


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(name)]


def is_secret_key(key: str) -> bool:
    """True for a config key or environment variable name whose value is a secret (see the
    module docstring for the rule). A dotted key is judged by its last segment."""
    words = _words(str(key).rsplit(".", 1)[-1])
    if not words or words[-1] not in _SECRET_WORDS:
        return False
    kind = words[-2] if len(words) > 1 else ""
    if words[-1] == "key" and kind in _PLAIN_KEY_KINDS:
        return False
    return not (words[-1] == "token" and kind in _PLAIN_TOKEN_KINDS)


def _names_secret_variable(key: str) -> bool:
    """`api_key_env`, `hf_token_env`: a key whose value is the *name* of a secret variable."""
    leaf = str(key).rsplit(".", 1)[-1]
    return leaf.lower().endswith("_env") and is_secret_key(leaf[: -len("_env")])


def redact(obj: Any) -> Any:
    """Copy of a config container with the values under secret keys replaced by '***' and
    known secret values masked inside any other string.

    Keys named `*_env` hold the *name* of an environment variable, not its value, and stay.
    """
    if isinstance(obj, Mapping):
        return {
            k: (MASK if is_secret_key(str(k)) and v not in (None, "") else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return scrub(obj)
    return obj


# --- secret values -------------------------------------------------------------------------


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list | tuple):
        for v in node:
            yield from _strings(v)
    elif node is not None and not isinstance(node, bool):
        yield str(node)


def _config_values(node: Any, environ: Mapping[str, str]) -> Iterator[str]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            if is_secret_key(str(k)):
                yield from _strings(v)
            elif _names_secret_variable(str(k)) and isinstance(v, str) and v in environ:
                yield environ[v]
            else:
                yield from _config_values(v, environ)
    elif isinstance(node, list | tuple):
        for v in node:
            if isinstance(v, str):
                yield from _override_values([v])
            else:
                yield from _config_values(v, environ)


def _override_values(overrides: Iterable[str]) -> Iterator[str]:
    """Values of `key=value` overrides whose key names a secret (`+llm.backends.x.api_key=...`,
    `hydra.job.env_set.OPENAI_API_KEY=...`)."""
    for o in overrides:
        m = _OVERRIDE.match(str(o))
        if m and is_secret_key(m["key"]):
            value = m["value"].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            yield value


def _container(cfg: DictConfig | Mapping | None) -> Any:
    if cfg is None:
        return {}
    if not isinstance(cfg, DictConfig):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception:  # an interpolation that cannot resolve here: the literal values still count
        return OmegaConf.to_container(cfg, resolve=False)


def secret_values(
    cfg: DictConfig | Mapping | None = None,
    argv: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> set[str]:
    """Every secret value the config, the command line and the environment hold."""
    env = os.environ if environ is None else environ
    found = set(_config_values(_container(cfg), env))
    found.update(_override_values(argv))
    found.update(v for k, v in env.items() if is_secret_key(k))
    return {v for v in found if len(v) >= MIN_SECRET_CHARS and not v.startswith("${")}


class Redactor:
    """The set of secret values this process knows, and the masking of text with it."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        new = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_CHARS}
        with self._lock:
            if new <= self._values:
                return
            self._values |= new
            alternatives = sorted(self._values, key=len, reverse=True)  # longest first
            self._pattern = re.compile("|".join(re.escape(v) for v in alternatives))

    def scrub(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return _BEARER.sub(rf"\1\2{MASK}", text) if "Bearer" in text else text


REDACTOR = Redactor()


def register(*values: str | None) -> None:
    """Add secret values that are known only at run time (a key read from the environment)."""
    REDACTOR.add(v for v in values if v)


def scrub(text: str) -> str:
    """`text` with every known secret value (and any Bearer credential) replaced by '***'."""
    return REDACTOR.scrub(text)
