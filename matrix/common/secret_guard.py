"""Applying the secrets rules (`matrix.common.secrets`) to a whole process. `guard` installs,
once per process and idempotently:

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
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from matrix.common.secrets import REDACTOR, redact, scrub, secret_values


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
