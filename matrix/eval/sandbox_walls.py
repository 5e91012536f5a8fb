"""Which of the sandbox's walls stand on this host, found by a probe run through the sandbox.

The walls (see `matrix.eval.sandbox`): bubblewrap (the file system read-only outside the
sample's folder, its own mount namespace), namespaces (no network, its own PID space: from
bubblewrap or `unshare`), rlimits (CPU, memory, file size, core, set by the guard) and the
guard (the audit hook that refuses file changes outside the folder, sockets, processes).

`detect_walls()` runs one probe sample with `sandbox.run_python`, the same call the code
benchmarks make, and reads what the sample saw from inside: its namespaces against this
process's, whether `/` is read-only, its resource limits, and whether opening a socket was
refused. So a wall is reported only when a sample actually runs behind it, whatever the
reason one is missing (bubblewrap not installed or refused by a container, `unshare` not
allowed, the sandbox command changed). The answer is cached for the process, and each
missing wall is logged as a warning with what to do about it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass

from matrix.eval import sandbox, sandbox_guard

log = logging.getLogger(__name__)

PROBE_LIMITS = sandbox.Limits(timeout_s=30, cpu_s=7, memory_mb=777, max_file_mb=3)
_NAMESPACES = ("mnt", "net", "pid")
_RLIMITS = ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_CORE")

# what the sample sees from inside the sandbox, printed as one JSON line
PROBE = f"""
import json, os, resource, socket
seen = {{
    "ns": {{k: os.readlink("/proc/self/ns/" + k) for k in {_NAMESPACES!r}}},
    "root_read_only": bool(os.statvfs("/").f_flag & os.ST_RDONLY),
    "rlimits": [resource.getrlimit(getattr(resource, n))[0] for n in {_RLIMITS!r}],
}}
try:
    socket.socket().close()
    seen["socket_refusal"] = ""
except PermissionError as e:
    seen["socket_refusal"] = str(e)
print(json.dumps(seen))
"""

_FIX = {
    "bubblewrap": "install bubblewrap (Debian/Ubuntu: apt-get install -y bubblewrap); in a "
    "container it also needs user namespaces (docker: --security-opt seccomp=unconfined)",
    "namespaces": "install bubblewrap, or allow `unshare -n -p` (util-linux) on this host",
    "rlimits": "the guard could not set its resource limits (matrix.eval.sandbox_guard)",
    "guard": "the guard's audit hook is not installed (matrix.eval.sandbox_guard)",
}


@dataclass(frozen=True)
class Walls:
    """The walls a sandboxed sample runs behind here (True: in force)."""

    bubblewrap: bool
    namespaces: bool
    rlimits: bool
    guard: bool

    @property
    def missing(self) -> list[str]:
        return [name for name, up in asdict(self).items() if not up]

    def as_dict(self) -> dict:
        """What scores.json and the manifest record: each wall, and the missing ones."""
        return {**asdict(self), "missing": self.missing}


def walls_seen(seen: dict, limits: sandbox.Limits = PROBE_LIMITS) -> Walls:
    """The walls, from what the probe printed inside the sandbox."""
    ns = {k: os.readlink(f"/proc/self/ns/{k}") for k in _NAMESPACES}
    own = {k: seen["ns"][k] != ns[k] for k in _NAMESPACES}
    mib = 1024 * 1024
    expected = [limits.cpu_s, limits.memory_mb * mib, limits.max_file_mb * mib, 0]
    return Walls(
        bubblewrap=own["mnt"] and seen["root_read_only"],
        namespaces=own["net"] and own["pid"],
        rlimits=seen["rlimits"] == expected,
        guard=seen["socket_refusal"].startswith(sandbox_guard.REFUSAL),
    )


def probe() -> Walls:
    """Run the probe through the sandbox now (uncached)."""
    result = sandbox.run_python(PROBE, PROBE_LIMITS)
    try:
        seen = json.loads(result.stdout.strip().splitlines()[-1])
        return walls_seen(seen)
    except (IndexError, KeyError, TypeError, ValueError):
        log.warning(
            "sandbox: the wall probe did not run (%s): %s", result.status, result.stderr[-500:]
        )
        return Walls(bubblewrap=False, namespaces=False, rlimits=False, guard=False)


@functools.cache
def detect_walls() -> Walls:
    """The walls in force, probed once per process; a warning for each missing one."""
    walls = probe()
    for name in walls.missing:
        why = ""
        if name == "bubblewrap" and shutil.which("bwrap") is None:
            why = " (bwrap is not installed)"
        elif name == "bubblewrap":
            why = " (bwrap is installed but cannot create its namespaces here)"
        log.warning(
            "sandbox: the %s wall is missing%s; generated code runs without it. Fix: %s",
            name,
            why,
            _FIX[name],
        )
    return walls
