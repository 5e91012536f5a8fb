"""The first code a sandboxed sample runs: limits on itself, then an audit hook, then the sample.

Run as `python -I -B sandbox_guard.py '<limits json>' solution.py` from the sample's temporary
working folder (see `matrix.eval.sandbox`). In order, it

1. sets its own resource limits (CPU seconds, address space, file size, no core dumps, process
   count) with `resource.setrlimit`. Doing it here, in the child itself, replaces a `preexec_fn`,
   which Python documents as unsafe when the parent has threads (the evaluator runs samples from
   a thread pool);
2. installs an audit hook (`sys.addaudithook`; a hook cannot be removed) that refuses, with a
   `PermissionError` whose message starts with `sandbox:`,
   - any change to the file system outside the working folder: open for writing (write, append,
     create, truncate or read-write flags), remove/unlink, rmdir, mkdir, rename/replace, link,
     symlink, chmod, chown, utime, truncate, xattr changes, `shutil.rmtree/move/copy*`. Paths
     are resolved through symlinks and `dir_fd`, so a link inside the folder pointing outside
     is treated as outside; `/dev/null` is the one outside path that may be written;
   - opening a directory outside the folder as a file descriptor (the `dir_fd` escape, since
     the `open` audit event does not carry `dir_fd`);
   - sockets and DNS, fork/exec/spawn/subprocess, ctypes, killing processes, raising its own
     resource limits, and walking the garbage collector (which could reach the hook's state);
3. replaces the few calls that raise no audit event but create files or processes
   (`os.mkfifo`, `os.mknod`, `_posixsubprocess.fork_exec`) with functions that refuse;
4. compiles `solution.py` and executes it as `__main__`.

The list of refused calls follows human-eval's `reliability_guard` (openai/human-eval,
`human_eval/execution.py`, MIT licence), which disables the same file, process and environment
calls by deleting them from `os`/`shutil`/`subprocess`; an audit hook refuses the underlying
operation however it is reached (`posix.remove`, `pathlib`, `os.replace`, ...).

Exit status 124 means the CPU-time limit fired. This module imports only the standard library.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

CPU_EXHAUSTED = 124  # exit status when the CPU-time soft limit fires
REFUSAL = "sandbox:"  # every refusal's message starts with this

# events refused whatever their arguments (prefix match)
_ALWAYS = (
    "socket.",
    "os.fork",
    "os.forkpty",
    "os.posix_spawn",
    "os.spawn",
    "os.exec",
    "os.system",
    "os.startfile",
    "subprocess.Popen",
    "pty.",
    "ctypes.",
    "os.kill",
    "os.killpg",
    "signal.pthread_kill",
    "resource.setrlimit",
    "resource.prlimit",
    "gc.get_objects",
    "gc.get_referrers",
    "gc.get_referents",
)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRITABLE_DEVICES = ("/dev/null",)


def apply_limits(limits: dict) -> None:
    """Set this process's resource limits from `Limits` fields (see `matrix.eval.sandbox`)."""
    cpu = int(limits["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    mem = int(limits["memory_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    size = int(limits["max_file_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.geteuid() != 0:  # the kernel ignores RLIMIT_NPROC for root
        # it counts every process of this user: allow what already runs plus the sample's own
        running = len([p for p in os.listdir("/proc") if p.isdigit()])
        n = running + int(limits["max_processes"]) + 4
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    # the CPU soft limit sends SIGXCPU: leave with a status the parent reads as a CPU timeout
    signal.signal(signal.SIGXCPU, lambda *_: os._exit(CPU_EXHAUSTED))


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _resolve(path, dir_fd: int | None = None, follow: bool = True) -> str | None:
    """Absolute real path of an audit event's path argument (None when it cannot be known)."""
    if isinstance(path, int):
        return _fd_path(path)
    try:
        path = os.fsdecode(os.fspath(path))
    except TypeError:
        return None
    if not os.path.isabs(path):
        base = _fd_path(dir_fd) if dir_fd is not None and dir_fd >= 0 else os.getcwd()
        if base is None:
            return None
        path = os.path.join(base, path)
    if follow:
        return os.path.realpath(path)
    # the entry itself (a link is removed or renamed, not its target): resolve only the parent
    head, tail = os.path.split(os.path.normpath(path))
    return os.path.join(os.path.realpath(head), tail)


def _inside(path: str | None, root: str) -> bool:
    return path is not None and (path == root or path.startswith(root + os.sep))


def _wants_write(mode, flags) -> bool:
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _mutated_paths(event: str, args: tuple) -> list[tuple[object, int | None, bool]]:
    """(path, dir_fd, follow symlinks) for each path an event changes; [] when none."""
    if event == "open":
        path, mode, flags = (*args, None, None)[:3]
        if isinstance(path, int):  # an already open descriptor: checked when it was opened
            return []
        return [(path, None, True)] if _wants_write(mode, flags) else []
    if event in ("os.remove", "os.rmdir"):
        return [(args[0], args[1], False)]
    if event == "os.mkdir":
        return [(args[0], args[2], False)]
    if event in ("os.rename", "os.link"):
        return [(args[0], args[2], False), (args[1], args[3], False)]
    if event == "os.symlink":
        return [(args[1], args[2], False)]
    if event in ("os.chmod", "os.utime", "os.chflags"):
        return [(args[0], args[-1] if event != "os.chflags" else None, True)]
    if event == "os.chown":
        return [(args[0], args[3], True)]
    if event in ("os.truncate", "os.setxattr", "os.removexattr"):
        return [(args[0], None, True)]
    if event == "shutil.rmtree":
        return [(args[0], args[1] if len(args) > 1 else None, False)]
    if event in ("shutil.move", "shutil.copytree"):
        return [(args[0], None, False), (args[1], None, False)]
    if event in ("shutil.copyfile", "shutil.copymode", "shutil.copystat"):
        return [(args[1], None, True)]
    if event == "shutil.chown":
        return [(args[0], None, True)]
    if event == "shutil.unpack_archive":
        return [(args[1], None, True)]
    return []


def install(root: str) -> None:
    """Install the audit hook confining file changes to `root` (irreversible for this process)."""
    busy = [False]  # the hook's own calls (realpath, readlink) must not re-enter it

    def hook(event: str, args: tuple) -> None:
        if busy[0]:
            return
        if event.startswith(_ALWAYS):
            raise PermissionError(f"{REFUSAL} {event} is not allowed")
        busy[0] = True
        try:
            for path, dir_fd, follow in _mutated_paths(event, args):
                real = _resolve(path, dir_fd, follow)
                if real in _WRITABLE_DEVICES or _inside(real, root):
                    continue
                raise PermissionError(
                    f"{REFUSAL} {event} outside the sandbox folder is not allowed: {path!r}"
                )
            if event == "open" and args[1] is None and not isinstance(args[0], int):
                # os.open of a directory outside: a dir_fd that later calls could write through
                real = _resolve(args[0])
                if real is not None and not _inside(real, root) and os.path.isdir(real):
                    raise PermissionError(
                        f"{REFUSAL} opening directory {args[0]!r} outside the sandbox folder "
                        "is not allowed"
                    )
        finally:
            busy[0] = False

    sys.addaudithook(hook)


def _refuse(name: str):
    def refused(*_args, **_kwargs):
        raise PermissionError(f"{REFUSAL} {name} is not allowed")

    return refused


def disable_unaudited() -> None:
    """Replace calls that raise no audit event but create files or processes."""
    import _posixsubprocess
    import posix

    for module in (os, posix):
        for name in ("mkfifo", "mknod"):
            if hasattr(module, name):
                setattr(module, name, _refuse(f"os.{name}"))
    _posixsubprocess.fork_exec = _refuse("_posixsubprocess.fork_exec")


def main(argv: list[str]) -> None:
    limits, solution = json.loads(argv[1]), argv[2]
    root = os.path.realpath(os.getcwd())
    apply_limits(limits)
    with open(solution, encoding="utf-8") as f:
        code = compile(f.read(), "solution.py", "exec")
    sys.argv = [solution]
    disable_unaudited()
    install(root)
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})


if __name__ == "__main__":
    main(sys.argv)
