"""What the thin entry points share: quiet logging and turning user errors into one clear
message (exit code 2) instead of a traceback."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from matrix.core.registry import get_stage
from matrix.core.validation import ConfigError

log = logging.getLogger("matrix")

# Errors that mean "fix your config or input": shown as one message, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError)


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
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|transformers)\.")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda r: "Tip:" not in r.getMessage() and "litlogger" not in r.getMessage()
    )


def run_user_command(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run `fn(cfg)`; a user error becomes one message on stderr and exit code 2."""
    quiet_logs()
    try:
        return fn(cfg)
    except USER_ERRORS as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run_stage(stage: str, cfg: DictConfig) -> Any:
    """Run a registered stage as its script does. The stage checks its config first
    (matrix.core.config_check.check_stage): every problem is reported before any model loads."""
    return run_user_command(get_stage(stage).run, cfg)
