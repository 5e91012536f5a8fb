"""The record of a server matrix started (pid, log, the command that starts it again), kept
under the cache root per port, and what a failing stage says from it: whether the server is
still running, its log's root-cause error with the fix for known causes, and the restart
command. `LocalServer` writes the record; `OpenAIBackend` reads it when a call fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from matrix.llm.embedded import cache_root


def record_path(port: int) -> Path:
    return cache_root() / "servers" / f"127.0.0.1-{port}.json"


def write_record(port: int, record: dict) -> None:
    """Atomically (re)write the record of the server on `port`."""
    path = record_path(port)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def server_record(base_url: str) -> dict | None:
    """What matrix knows about the server at `base_url` if matrix started it on this machine
    (pid, log, restart command), else None."""
    m = re.match(r"https?://(?:127\.0\.0\.1|localhost|\[::1\]):(\d+)", base_url)
    if not m:
        return None
    try:
        return json.loads(record_path(int(m.group(1))).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Lines in vLLM's log that only relay an earlier error; the root cause is the line before them.
_RELAYS = re.compile(
    r"EngineDeadError|EngineCore encountered|Worker failed with error|output_handler failed|"
    r"See stack trace|CancelledError|KeyboardInterrupt",
    re.I,
)
_ERROR_LINE = re.compile(r"\b([A-Z]\w*(?:Error|Exception)): (.+)$")
# vLLM's log lines below ERROR level; their text can quote an error it warns about (at every
# start: "... can cause fd limit errors like `OSError: [Errno 24] Too many open files`").
_NOT_AN_ERROR = re.compile(r"\b(?:DEBUG|INFO|WARNING) \d\d-\d\d \d\d:\d\d:\d\d ")
# Known causes of an engine death and what fixes each.
_HINTS = (
    (
        "CPU Generator does not use offset",
        "vLLM's CPU build cannot serve seeded requests whose prompt is prefilled in chunks; "
        "serve with `python -m matrix.llm.server` (it turns chunked prefill off on the CPU "
        "build) or add `--no-enable-chunked-prefill --max-num-batched-tokens <max-model-len>` "
        "to your `vllm serve` command",
    ),
    (
        "out of memory",
        "lower --max-model-len or the batch (max_concurrency), or use a larger device",
    ),
)


def last_error(log_text: str) -> str | None:
    """The root-cause error line of a vLLM log (`RuntimeError: ...`), skipping the lines that
    only relay it (EngineDeadError and friends); None if the log shows no error."""
    found = None
    for line in log_text.splitlines():
        m = _ERROR_LINE.search(line)
        if m and not _RELAYS.search(line) and not _NOT_AN_ERROR.search(line):
            found = f"{m.group(1)}: {m.group(2).strip()}"
    return found


def log_since(path: str | Path, offset: int) -> str:
    """What a server wrote to its log from byte `offset` on (the log is appended to across
    restarts; a start records where its part begins). Empty when the log cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def exit_reason(code: int | None) -> str:
    """A process exit status in words: a negative one is the signal that ended it."""
    if code is None or code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:
        return f"was killed by {name} (the kernel's OOM killer or a `kill -9`)"
    return f"was killed by {name}"


def hint_for(error: str) -> str | None:
    for needle, hint in _HINTS:
        if needle.lower() in error.lower():
            return hint
    return None


def diagnose(base_url: str) -> str:
    """One paragraph on the server at `base_url` for an error message: whether matrix started
    it and it is still running, its log's last error (with the fix for known causes), and the
    command that starts it again. Empty when matrix did not start a server there."""
    rec = server_record(base_url)
    if rec is None:
        return ""
    state = "is still running" if _alive(int(rec["pid"])) else "has exited"
    parts = [f"The server matrix started there (pid {rec['pid']}) {state}; log {rec['log']}."]
    err = last_error(log_since(rec["log"], int(rec.get("log_offset", 0))))
    if err:
        parts.append(f"Its log's last error: {err}.")
        hint = hint_for(err)
        if hint:
            parts.append(f"Fix: {hint}.")
    parts.append(f"Restart it with: {rec['restart']}")
    return " ".join(parts)
