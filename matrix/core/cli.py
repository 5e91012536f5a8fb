"""What the thin entry points share: quiet logging, a command-line typo check, and turning
user errors (a bad config or input, a full or read-only disk) into one clear message and
exit code 2 instead of a traceback."""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from matrix.common.io import StorageError, storage_error
from matrix.common.secret_guard import guard
from matrix.common.validation import ConfigError, ConfigProblems
from matrix.core.folder_lock import FolderInUse, stage_writer
from matrix.core.registry import get_stage

log = logging.getLogger("matrix")

# Errors that mean "fix your config, input or disk" (or "this folder has a live writer"):
# shown as one message, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    FileNotFoundError,
    StorageError,
    FolderInUse,
)


# Libraries that log every HTTP request (or retry) at INFO (the openai SDK uses httpx2 now).
CHATTY_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai")


def quiet_logs() -> None:
    """One line per event in a user's console: Lightning logs through its own handler *and*
    propagates to Hydra's root handler (every INFO line twice), and libraries print tips and
    deprecation notices that are not the user's to act on. Real warnings stay."""
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        lg.handlers.clear()  # the root handler (Hydra's) prints them once
        lg.propagate = True
    # Advertising tips ("💡 Tip: for seamless cloud uploads ...", litlogger) and deprecations
    # raised inside libraries, not in the user's code.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings(
        "ignore", category=FutureWarning, module=r"(torch|transformers|lightning)\."
    )
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # matrix.train.resume owns the checkpoint folder (its run.json marker, the checkpoints of
    # this config only), so a non-empty folder is expected, never a sign of a clash.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda r: "Tip:" not in r.getMessage() and "litlogger" not in r.getMessage()
    )
    # A line per LLM call against a server (httpx: "HTTP Request: POST ... 200 OK") buries the
    # run's own lines: these say warnings only, unless debug output was asked for
    # (`hydra.verbose=true`, or `hydra.verbose=[httpx]` for one of them).
    for name in CHATTY_LOGGERS:
        chatty = logging.getLogger(name)
        if not chatty.isEnabledFor(logging.DEBUG):
            chatty.setLevel(logging.WARNING)


# Hydra flags that take a value (the value is not an override).
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--info", "-i"}


def command_line_problems(argv: list[str]) -> ConfigProblems:
    """Overrides that name no key of any file under conf/. Hydra refuses `key=value` for an
    unknown key itself, but with exit code 1 and no suggestion; this names the closest key."""
    from matrix.core.config_check import CONF_DIR, _is_open, _normalize, _suggest, known_keys

    p = ConfigProblems()
    if any(a in ("--config-dir", "-cd", "--config-path", "-cp") for a in argv):
        return p  # a user's own config tree: its keys are checked after composition
    known = known_keys()
    groups = {str(d.relative_to(CONF_DIR)).replace("/", ".") for d in CONF_DIR.rglob("*/")}
    skip = False
    for arg in argv:
        if skip or arg.startswith("-"):
            skip = arg in _FLAGS_WITH_VALUE
            continue
        if arg.startswith(("+", "~")) or "=" not in arg:
            continue  # additions are checked after composition; deletions name existing keys
        key = arg.split("=", 1)[0].split("@", 1)[0].replace("/", ".")
        if key.startswith("hydra") or key in groups or _normalize(key) in known:
            continue
        parts = _normalize(key).split(".")
        if any(_is_open(".".join(parts[:i])) for i in range(1, len(parts))):
            continue  # inside a block its component checks (a backend's constructor)
        p.add(key, f"unknown key; {_suggest(_normalize(key), known, key)}")
    return p


def check_command_line(argv: list[str] | None = None) -> None:
    """Exit with code 2 and every unknown override named, before Hydra composes anything."""
    problems = command_line_problems(sys.argv[1:] if argv is None else argv)
    if problems:
        try:
            problems.raise_if_any("command line")
        except ConfigError as e:
            _fail(e)


def run_user_command(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run `fn(cfg)`; a user error becomes one message on stderr and exit code 2."""
    quiet_logs()
    guard(cfg)  # secrets out of logs, the console and .hydra/ (also without Hydra's callback)
    try:
        return fn(cfg)
    except USER_ERRORS as e:
        _fail(e)
    except OSError as e:
        # A full or read-only disk hit by a write outside matrix.common.io (a checkpoint, a model).
        if (err := storage_error(e)) is None:
            raise
        _fail(err)


def _fail(e: BaseException) -> None:
    log.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run_stage(stage: str, cfg: DictConfig) -> Any:
    """Run a registered stage as its script does. The stage checks its config first
    (matrix.core.config_check.check_stage): every problem is reported before any model loads.
    In a multirun the job runs as one arm of the sweep (matrix.core.sweep). The run holds its
    stage folder's lock throughout (matrix.core.folder_lock): one writer per folder."""
    from matrix.core.sweep import name_sweep_job, record_arm

    spec = get_stage(stage)

    def arm(cfg: DictConfig) -> Any:
        name_sweep_job(cfg, stage=stage)
        with stage_writer(cfg, stage):
            result = spec.run(cfg)
        record_arm(cfg)
        return result

    return run_user_command(arm, cfg)


class WritableRunsDir(Callback):
    """Hydra callback: stop with one message (exit 2) when paths.runs_dir is on a read-only
    disk, before Hydra tries to create its run folder there (conf/base.yaml)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if runs_dir := OmegaConf.select(config, "paths.runs_dir"):
            check_writable(runs_dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.on_run_start(config)


def check_writable(folder: str | Path) -> None:
    """Exit 2 naming the folder and the fix if `folder` (or, while it does not exist yet, the
    nearest folder above it) cannot be written."""
    path = Path(folder).expanduser().absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    if not os.access(path, os.W_OK):
        code = errno.EROFS if _read_only_fs(path) else errno.EACCES
        _fail(storage_error(OSError(code, os.strerror(code), str(path)), path))


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
