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
secret values in free text. `guard` installs, once per process and idempotently:

- a log-record factory that scrubs each record's message and exception text as the record is
  made, so every handler (console, Hydra's job log file) gets the clean text. A factory rather
  than a handler filter because Hydra replaces the handlers when it configures logging for
  each job;
- a wrapper around sys.stdout and sys.stderr that scrubs every write (prints, warnings, and the
  traceback Python or Hydra prints for an uncaught error). A secret split across two writes
  is not recognised; Python writes a traceback and a log line in one piece;
- a rewrite of the files Hydra saved for the job (`.hydra/config.yaml`, `hydra.yaml`,
  `overrides.yaml`, under `hydra.output_subdir`) and of the sweep's `multirun.yaml`.

`GuardCallback` (hydra.callbacks.secrets in conf/base.yaml) calls `guard` before Hydra prints
or launches anything, and again once each job's `.hydra/` files are saved (Hydra saves them
just before `on_job_start`); `matrix.core.cli.run_stage` calls it too, for entry points composed
without Hydra's runner.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

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


# --- installing the guard ------------------------------------------------------------------


class _ScrubbingStream:
    """A text stream whose writes are scrubbed; everything else goes to the wrapped stream."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(scrub(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _scrub_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: logging reports it itself, later
        return
    clean = scrub(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        clean = scrub(text)
        if clean != text:
            record.exc_text = clean
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)


_installed = False


def _install_process_hooks() -> None:
    global _installed
    if not _installed:
        make_record = logging.getLogRecordFactory()

        def scrubbing_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            _scrub_record(record)
            return record

        logging.setLogRecordFactory(scrubbing_factory)
        _installed = True
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _ScrubbingStream):
            setattr(sys, name, _ScrubbingStream(stream))


def scrub_file(path: str | Path) -> bool:
    """Rewrite a text file with secrets masked (atomically); True if anything changed. A YAML
    file is rewritten through `redact`, so it stays loadable (a bare *** would read as an
    alias) and a value under a secret key is masked even when it is too short to scrub."""
    from matrix.common.io import atomic_write_text

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return False
    clean = scrub(text)
    if path.suffix in (".yaml", ".yml"):
        try:
            data = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
        except Exception:  # not ours to parse; the text scrub above still applies
            pass
        else:
            clean = OmegaConf.to_yaml(OmegaConf.create(redact(data)))
            if OmegaConf.to_yaml(OmegaConf.create(data)) == clean:
                return False
    if clean == text:
        return False
    atomic_write_text(path, clean)
    return True


def scrub_hydra_files() -> list[Path]:
    """Mask secrets in the files Hydra saved for the running job (.hydra/*.yaml) and in the
    sweep's multirun.yaml; returns the files rewritten. Nothing to do outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hc = HydraConfig.get()
    except ValueError:
        return []
    files: list[Path] = []
    output_dir = hc.runtime.get("output_dir")
    if hc.output_subdir is not None and output_dir:
        files += sorted((Path(output_dir) / str(hc.output_subdir)).glob("*.yaml"))
    if hc.mode == RunMode.MULTIRUN and hc.sweep.dir:
        files.append(Path(hc.sweep.dir) / "multirun.yaml")
    return [f for f in files if scrub_file(f)]


def guard(cfg: DictConfig | Mapping | None = None) -> None:
    """Learn the secrets of `cfg`, the command line and the environment, make sure logs and
    the console are scrubbed, and mask them in Hydra's saved files. Safe to call repeatedly."""
    argv = list(sys.argv[1:])
    if isinstance(cfg, DictConfig) and OmegaConf.select(cfg, "hydra.overrides") is not None:
        overrides = cfg.hydra.overrides
        argv += [str(o) for o in (*overrides.get("task", ()), *overrides.get("hydra", ()))]
    REDACTOR.add(secret_values(cfg, argv))
    _install_process_hooks()
    scrub_hydra_files()


@contextlib.contextmanager
def scrubbed_argv() -> Iterator[None]:
    """sys.argv with secret values masked, for libraries that record the command line (W&B's
    run metadata); restored afterwards, since Lightning relaunches DDP ranks from sys.argv."""
    saved = sys.argv
    sys.argv = [scrub(a) for a in saved]
    try:
        yield
    finally:
        sys.argv = saved


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - Hydra is a core dependency
    Callback = object  # type: ignore[misc,assignment]


class GuardCallback(Callback):
    """Hydra callback: `guard` before Hydra logs the sweep's overrides or starts a job, and
    after it saves each job's .hydra/ files (conf/base.yaml: hydra.callbacks.secrets)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        guard(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        guard(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        guard(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        scrub_file(Path(str(config.hydra.sweep.dir)) / "multirun.yaml")
