"""The skip-or-fail policy for malformed rows of a user-supplied file.

A loader reads a file line by line (`matrix.common.io.jsonl_lines` for JSONL), decides why a row
is unusable, and hands that to `BadRows.add`, which names the file and line, then either
fails at once (`on_error: fail`) or logs, counts and moves on (`on_error: skip`). The profile
loader (`population.on_error`) and the training data (`data.on_error`) share it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from matrix.common.validation import ConfigError

log = logging.getLogger(__name__)

ON_ERROR = ("skip", "fail")
# Skipped lines logged (and listed in a manifest) one by one; the rest are only counted.
SHOWN = 20


@dataclass
class BadRows:
    path: Path
    on_error: str
    key: str  # the config key that sets the policy, named in the error
    error: type[ConfigError] = ConfigError
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"{self.key}={self.on_error!r}: use 'skip' or 'fail'")

    def add(self, where: int | str, why: str) -> None:
        """A malformed row at `where` (a line number, or `Table.where`'s place of a row)."""
        msg = f"{self.path}:{where}: {why}"
        if self.on_error == "fail":
            raise self.error(f"{msg} (set {self.key}=skip to skip such lines)")
        if len(self.skipped) < SHOWN:
            log.warning("skipping %s", msg)
        self.skipped.append(msg)

    def summary(self, rows: int) -> None:
        if self.skipped:
            log.warning(
                "%s: skipped %d of %d rows (%s=skip); the first: %s",
                self.path,
                len(self.skipped),
                rows,
                self.key,
                self.skipped[0],
            )
