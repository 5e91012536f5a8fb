"""What the thin stage scripts share: logging set-up and turning user errors into one
clear message instead of a traceback."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from matrix.config_check import check_config
from matrix.secrets import guard
from matrix.validation import ConfigError

log = logging.getLogger("matrix")

# Errors that mean "fix your config or input": shown as one message, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError)


def run_stage(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    guard(cfg)  # secrets out of logs, the console and .hydra/ (also without Hydra's callback)
    try:
        # Config-wide checks (unknown keys, zero budgets, shards) before any model loads.
        check_config(cfg, fn.__name__.removeprefix("run_"))
        return fn(cfg)
    except USER_ERRORS as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
