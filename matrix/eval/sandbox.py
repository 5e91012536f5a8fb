"""Run untrusted generated Python in a separate, limited process.

Layers, each a backstop for the others:
- resource limits set in the child before exec: CPU seconds (RLIMIT_CPU), address space
  (RLIMIT_AS), file size (RLIMIT_FSIZE), no core dumps, process count (RLIMIT_NPROC; ignored by
  the kernel for root, hence the next layers);
- a wall-clock timeout after which the whole process group is killed;
- Linux namespaces via `unshare` when the host allows it: a network namespace with no interfaces
  (no network at all) and a PID namespace whose processes all die with the sample;
- an audit hook installed before the generated code runs (audit hooks cannot be removed) that
  refuses sockets, DNS, fork/exec/spawn/subprocess and ctypes, so a network call or a fork bomb
  fails with an exception even where namespaces are unavailable;
- a fresh temporary working directory, an empty environment and `python -I` (no user site, no
  PYTHONPATH).

This is meant for benchmark solutions written by a model, not for code written to attack the
host; run evaluations of untrusted models inside a container as well.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

_CPU_EXHAUSTED = 124  # exit code the guard uses when the CPU-time soft limit fires

_GUARD = r"""
import os
import signal
import sys

# the CPU soft limit sends SIGXCPU: leave with a code the parent reads as a timeout
signal.signal(signal.SIGXCPU, lambda *_: os._exit(124))

_BLOCKED = (
    "socket.", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
    "subprocess.Popen", "ctypes.", "os.kill", "os.killpg",
)


def _sandbox_guard(event, args):
    if event.startswith(_BLOCKED):
        raise PermissionError(f"sandbox: {event} is not allowed")


sys.addaudithook(_sandbox_guard)
del _sandbox_guard
with open(sys.argv[1], encoding="utf-8") as _f:
    _code = compile(_f.read(), "solution.py", "exec")
del _f
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
"""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock
    cpu_s: int = 10
    memory_mb: int = 1024
    max_processes: int = 1
    max_file_mb: int = 16


@dataclass(frozen=True)
class ExecResult:
    status: str  # passed | failed | timeout
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.cache
def namespace_prefix() -> tuple[str, ...]:
    """The `unshare` command that gives a sample no network and its own PID space, if any works."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    for flags in (("-n", "-p", "-f", "--kill-child"), ("-r", "-n", "-p", "-f", "--kill-child")):
        cmd = (exe, *flags)
        try:
            ok = subprocess.run([*cmd, "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return cmd
    return ()


def _limit_child(limits: Limits) -> None:
    # runs in the child between fork and exec
    mem = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    size = limits.max_file_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.geteuid() != 0:
        # counts every process of this user, so allow what is already running plus the sample's
        running = len([p for p in os.listdir("/proc") if p.isdigit()])
        n = running + limits.max_processes + 4
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))


def run_python(
    code: str, limits: Limits = Limits(), python: str = sys.executable, isolate: bool = True
) -> ExecResult:
    """Execute `code` as a script in a sandboxed child process.

    `isolate=False` skips the namespaces (for hosts where `unshare` misbehaves); the other
    layers stay.
    """
    with tempfile.TemporaryDirectory(prefix="matrix-sandbox-") as tmp:
        work = Path(tmp)
        (work / "solution.py").write_text(code, encoding="utf-8")
        (work / "guard.py").write_text(_GUARD, encoding="utf-8")
        cmd = [*(namespace_prefix() if isolate else ()), python, "-I", "guard.py", "solution.py"]
        out_path, err_path = work / "stdout.txt", work / "stderr.txt"
        start = time.monotonic()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=work,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                preexec_fn=functools.partial(_limit_child, limits),
                start_new_session=True,  # its own process group, killed as a whole below
            )
            timed_out = False
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)
                proc.wait()
        seconds = time.monotonic() - start
        stdout = out_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        stderr = err_path.read_text(encoding="utf-8", errors="replace")[-4000:]
    rc = proc.returncode
    # killed by the hard CPU limit: a signal status, which `unshare` may report as a plain 1
    cpu_killed = rc in (-signal.SIGXCPU, -signal.SIGKILL) or (rc != 0 and seconds >= limits.cpu_s)
    if timed_out or rc == _CPU_EXHAUSTED or cpu_killed:
        status = "timeout"
    else:
        status = "passed" if rc == 0 else "failed"
    return ExecResult(status, None if timed_out else rc, stdout, stderr, round(seconds, 3))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_many(
    programs: Sequence[str], limits: Limits = Limits(), workers: int | None = None
) -> list[ExecResult]:
    """Run programs concurrently (threads only wait on child processes), results in order."""
    workers = workers or max(1, (os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: run_python(c, limits), programs))
