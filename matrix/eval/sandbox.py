"""Run untrusted generated Python in a separate, limited process.

Layers, each a backstop for the others:
- a guard (`matrix.eval.sandbox_guard`) that the child runs before the sample: it sets the
  child's own resource limits (CPU seconds, address space, file size, no core dumps, process
  count; RLIMIT_NPROC is ignored by the kernel for root, hence the next layers), then installs
  an audit hook (audit hooks cannot be removed) that refuses any file change outside the
  sample's temporary folder (open for writing, remove, rename, rmdir, chmod, rmtree, ...),
  sockets and DNS, fork/exec/spawn/subprocess, ctypes and killing processes. Limits are set by
  the child itself rather than in a `preexec_fn`, which is unsafe when the parent has threads;
- bubblewrap (`bwrap`) when it is installed and works on this host: the whole file system
  read-only except the temporary folder, fresh /dev and /proc, no network, its own PID, IPC and
  UTS namespaces, all capabilities dropped, killed with its parent;
- otherwise `unshare` when the host allows it: a network namespace with no interfaces and a PID
  namespace whose processes all die with the sample;
- a wall-clock timeout after which the whole process group is killed, then a sweep that kills
  any process still carrying the run's marker in its environment (one that left the process
  group with `setsid`), counted in `ExecResult.escaped`;
- a fresh temporary working directory, an empty environment, `python -I -B` (no user site, no
  PYTHONPATH, no bytecode written).

Which of these walls stand on a host is probed once per process by
`matrix.eval.sandbox_walls.detect_walls` (a missing one is logged as a warning, and the code
benchmarks record them in their scores). This is meant for benchmark solutions written by a model, not for code written to attack the
host; run evaluations of untrusted models inside a container as well.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from matrix.eval import sandbox_guard

_CPU_EXHAUSTED = sandbox_guard.CPU_EXHAUSTED
_MARKER = "MATRIX_SANDBOX_RUN"  # environment variable naming a run, inherited by its processes


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
    limit: str | None = None  # the Limits field that ended the run: "cpu_s" | "timeout_s"
    escaped: int = 0  # processes that had left the sample's process group (killed by the sweep)
    run_id: str = ""  # the value of MATRIX_SANDBOX_RUN in the run's environment

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


def bwrap_prefix(work: Path) -> tuple[str, ...]:
    """The bubblewrap command confining a sample to `work` (read-only elsewhere, no network)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return ()
    w = str(work)
    return (
        exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--bind", w, w,
        "--chdir", w, "--unshare-all", "--die-with-parent", "--new-session",
        "--cap-drop", "ALL",
    )  # fmt: skip


@functools.cache
def bwrap_works() -> bool:
    """Whether `bwrap` is installed and can create its namespaces here (containers may refuse)."""
    if shutil.which("bwrap") is None:
        return False
    with tempfile.TemporaryDirectory(prefix="matrix-sandbox-probe-") as tmp:
        try:
            cmd = [*bwrap_prefix(Path(tmp)), "true"]
            return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def isolation_prefix(work: Path) -> tuple[str, ...]:
    """bubblewrap when it works, else `unshare` when it works, else nothing (guard only)."""
    return bwrap_prefix(work) if bwrap_works() else namespace_prefix()


@functools.cache
def _guard_source() -> str:
    return Path(sandbox_guard.__file__).read_text(encoding="utf-8")


def command(work: Path, limits: Limits, python: str, isolate: bool = True) -> list[str]:
    """The command that runs `work/solution.py`: the isolation prefix, then the guard."""
    guard = [python, "-I", "-B", "guard.py", json.dumps(asdict(limits)), "solution.py"]
    return [*(isolation_prefix(work) if isolate else ()), *guard]


def run_python(
    code: str, limits: Limits = Limits(), python: str = sys.executable, isolate: bool = True
) -> ExecResult:
    """Execute `code` as a script in a sandboxed child process.

    Safe to call from several threads at once (no `preexec_fn`). `isolate=False` skips
    bubblewrap and the namespaces (for hosts where they misbehave); the other layers stay.
    """
    run_id = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="matrix-sandbox-") as tmp:
        work = Path(tmp).resolve()
        (work / "solution.py").write_text(code, encoding="utf-8")
        (work / "guard.py").write_text(_guard_source(), encoding="utf-8")
        cmd = command(work, limits, python, isolate)
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "TMPDIR": str(work),
            _MARKER: run_id,
        }
        out_path, err_path = work / "stdout.txt", work / "stderr.txt"
        start = time.monotonic()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
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
                escaped = sweep(run_id, group=proc.pid)
        seconds = time.monotonic() - start
        stdout = out_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        stderr = err_path.read_text(encoding="utf-8", errors="replace")[-4000:]
    rc = proc.returncode
    # killed by the hard CPU limit: a signal status, which `unshare` may report as a plain 1
    cpu_killed = rc in (-signal.SIGXCPU, -signal.SIGKILL) or (rc != 0 and seconds >= limits.cpu_s)
    limit = None
    if timed_out:
        limit = "timeout_s"
    elif rc == _CPU_EXHAUSTED or cpu_killed:
        limit = "cpu_s"
    status = "timeout" if limit else ("passed" if rc == 0 else "failed")
    returncode = None if timed_out else rc
    return ExecResult(status, returncode, stdout, stderr, round(seconds, 3), limit, escaped, run_id)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def marked_processes(run_id: str) -> dict[int, int]:
    """{pid: process group} of the live processes whose environment names this run."""
    needle = f"{_MARKER}={run_id}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            if needle in environ.split(b"\0"):
                stat = Path(f"/proc/{entry}/stat").read_text()
                # fields after the command name, which is in parentheses and may hold spaces
                found[int(entry)] = int(stat.rsplit(")", 1)[1].split()[2])
        except (OSError, ValueError, IndexError):
            continue  # gone, a zombie, or another user's
    return found


def sweep(run_id: str, group: int, wait_s: float = 2.0) -> int:
    """Kill every process of this run; return how many had left process group `group`."""
    escaped: set[int] = set()
    deadline = time.monotonic() + wait_s
    while True:
        alive = marked_processes(run_id)
        if not alive:
            return len(escaped)
        for pid, pgid in alive.items():
            if pgid != group:
                escaped.add(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return len(escaped)
        time.sleep(0.01)


def run_many(
    programs: Sequence[str], limits: Limits = Limits(), workers: int | None = None
) -> list[ExecResult]:
    """Run programs concurrently (threads only wait on child processes), results in order."""
    workers = workers or max(1, (os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: run_python(c, limits), programs))
