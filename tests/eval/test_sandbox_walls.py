"""The sandbox's walls, and a negative control: the same checks fail when the sandbox command
is replaced by plain exec (the sample run by a bare interpreter), so they cannot pass by
accident on a host where the sandbox does nothing.

`MATRIX_REQUIRE_BWRAP=1` (set by `.ci/run`, which installs bubblewrap) turns a missing
bubblewrap or namespace wall into a failure instead of a skip.
"""

import logging
import os
import socket
import subprocess
import sys

import pytest

from matrix.eval import sandbox, sandbox_walls
from matrix.eval.sandbox import Limits, bwrap_works, marked_processes, namespace_prefix

FAST = Limits(timeout_s=20, cpu_s=2, memory_mb=512)
REFUSED = "PermissionError: sandbox:"
REQUIRE_BWRAP = os.environ.get("MATRIX_REQUIRE_BWRAP") == "1"


def plain_exec(work, limits, python, isolate=True):
    """The sandbox replaced by plain exec: no isolation prefix, no guard."""
    return [python, "solution.py"]


def isolation_expected() -> bool:
    """Whether this host must give samples bubblewrap and namespaces (fails, not skips, in CI)."""
    return REQUIRE_BWRAP or bwrap_works()


def wall_rlimits(tmp_path):
    limits = Limits(timeout_s=20, cpu_s=3, memory_mb=700, max_file_mb=5)
    code = (
        "import resource as r\n"
        "print(r.getrlimit(r.RLIMIT_CPU)[0], r.getrlimit(r.RLIMIT_AS)[0],"
        " r.getrlimit(r.RLIMIT_FSIZE)[0], r.getrlimit(r.RLIMIT_CORE)[0])"
    )
    r = sandbox.run_python(code, limits)
    assert r.stdout.strip() == f"3 {700 * 1024 * 1024} {5 * 1024 * 1024} 0"


def wall_limits_cannot_be_raised(tmp_path):
    code = "import resource as r\nr.setrlimit(r.RLIMIT_CPU, (100, 100))\nprint('raised')"
    r = sandbox.run_python(code, FAST)
    assert r.status == "failed" and "raised" not in r.stdout
    assert f"{REFUSED} resource.setrlimit is not allowed" in r.stderr


def wall_no_network(tmp_path):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.5)
    try:
        port = srv.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
        r = sandbox.run_python(code + "\nprint('connected')", FAST)
        assert r.status == "failed" and "connected" not in r.stdout
        try:
            srv.accept()[0].close()
            accepted = True
        except TimeoutError:
            accepted = False
        assert not accepted, "the host's listener saw a connection from the sample"
    finally:
        srv.close()


def wall_no_processes(tmp_path):
    code = "import os\nif os.fork() == 0:\n    os.setsid()\n    os._exit(0)\nprint('forked')"
    r = sandbox.run_python(code, FAST)
    assert r.status == "failed" and "forked" not in r.stdout
    assert f"{REFUSED} os.fork is not allowed" in r.stderr
    assert marked_processes(r.run_id) == {}


def wall_no_write_outside(tmp_path):
    target = tmp_path / "outside.txt"
    target.write_text("keep")
    r = sandbox.run_python(f"open({str(target)!r}, 'w').write('gone')\nprint('written')", FAST)
    assert r.status == "failed" and "written" not in r.stdout
    assert target.read_text() == "keep"


def wall_probe_reports_every_wall(tmp_path):
    walls = sandbox_walls.probe()
    assert walls.guard and walls.rlimits
    if isolation_expected():
        assert walls.bubblewrap and walls.namespaces, walls
    elif namespace_prefix():
        assert walls.namespaces, walls


WALLS = [
    wall_rlimits,
    wall_limits_cannot_be_raised,
    wall_no_network,
    wall_no_processes,
    wall_no_write_outside,
    wall_probe_reports_every_wall,
]


@pytest.mark.parametrize("wall", WALLS, ids=lambda f: f.__name__)
def test_wall_stands(wall, tmp_path):
    wall(tmp_path)


@pytest.mark.parametrize("wall", WALLS, ids=lambda f: f.__name__)
def test_wall_check_fails_when_the_sandbox_is_plain_exec(wall, tmp_path, monkeypatch):
    """Negative control: each wall check above catches a sandbox that does nothing."""
    monkeypatch.setattr(sandbox, "command", plain_exec)
    with pytest.raises(AssertionError):
        wall(tmp_path)


def test_probe_reports_no_wall_under_plain_exec(monkeypatch):
    monkeypatch.setattr(sandbox, "command", plain_exec)
    walls = sandbox_walls.probe()
    assert walls.missing == ["bubblewrap", "namespaces", "rlimits", "guard"]


def test_missing_walls_are_each_logged_once(monkeypatch, caplog):
    """Without bubblewrap or unshare the guard and rlimits remain, and the run says so."""
    monkeypatch.setattr(sandbox, "isolation_prefix", lambda work: ())
    sandbox_walls.detect_walls.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="matrix.eval.sandbox_walls"):
            first = sandbox_walls.detect_walls()
            assert sandbox_walls.detect_walls() is first  # probed once per process
    finally:
        sandbox_walls.detect_walls.cache_clear()
    assert first.as_dict() == {
        "bubblewrap": False,
        "namespaces": False,
        "rlimits": True,
        "guard": True,
        "missing": ["bubblewrap", "namespaces"],
    }
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2
    assert "the bubblewrap wall is missing" in warned[0] and "apt-get install" in warned[0]
    assert "the namespaces wall is missing" in warned[1]


def test_bwrap_runs_on_this_host():
    """Where bubblewrap is required (CI), it must be installed and able to run here."""
    if not REQUIRE_BWRAP and not bwrap_works():
        pytest.skip("bubblewrap is not installed or cannot run here (CI requires it)")
    assert bwrap_works()
    out = subprocess.run(
        ["bwrap", "--ro-bind", "/", "/", "--unshare-all", sys.executable, "-c", "print(1)"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr
