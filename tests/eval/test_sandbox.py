"""The sandbox's layers, each test asserting the refusal the sandbox itself produces.

A refusal by the guard's audit hook is a `PermissionError` whose message starts with
`sandbox:`; the CPU limit is the guard's exit status 124 (`limit == "cpu_s"`); the memory limit
is a `MemoryError` under the guard's RLIMIT_AS. So each test fails when the sample runs without
the sandbox rather than merely failing for another reason (no network, a missing file);
test_sandbox_walls.py shows it by running wall checks against plain exec.
"""

import os
import socket
import subprocess
import sys
import threading

import pytest

from matrix.eval import sandbox
from matrix.eval.sandbox import (
    Limits,
    bwrap_prefix,
    bwrap_works,
    marked_processes,
    namespace_prefix,
    run_many,
    run_python,
)

FAST = Limits(timeout_s=20, cpu_s=2, memory_mb=512)
REFUSED = "PermissionError: sandbox:"
REQUIRE_BWRAP = os.environ.get("MATRIX_REQUIRE_BWRAP") == "1"  # set by .ci/run


def test_correct_solution_passes():
    r = run_python("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('ok')", FAST)
    assert r.passed and r.stdout.strip() == "ok"


def test_failing_assertion_fails():
    r = run_python("assert 1 == 2", FAST)
    assert r.status == "failed" and "AssertionError" in r.stderr


def test_infinite_loop_hits_the_guards_cpu_limit():
    # generous wall clock so that only the CPU limit the guard set can end it
    r = run_python("while True:\n    pass", Limits(timeout_s=60, cpu_s=1, memory_mb=512))
    assert r.status == "timeout" and r.limit == "cpu_s" and not r.passed


def test_sleeping_forever_hits_wall_timeout():
    r = run_python("import time\ntime.sleep(60)", Limits(timeout_s=1, cpu_s=2))
    assert r.status == "timeout" and r.limit == "timeout_s" and r.returncode is None


def test_memory_hog_fails():
    r = run_python("x = bytearray(4 * 1024 ** 3)\nprint('allocated')", FAST)
    assert r.status == "failed" and "allocated" not in r.stdout
    assert "MemoryError" in r.stderr


def test_limits_are_set_by_the_child_without_preexec_fn(monkeypatch):
    """The guard sets the limits on itself; Popen gets no preexec_fn (unsafe with threads)."""
    calls = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        calls.append(kwargs)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(sandbox.subprocess, "Popen", recording_popen)
    limits = Limits(timeout_s=20, cpu_s=3, memory_mb=700, max_file_mb=5)
    code = (
        "import resource as r\n"
        "print(r.getrlimit(r.RLIMIT_CPU)[0], r.getrlimit(r.RLIMIT_AS)[0],"
        " r.getrlimit(r.RLIMIT_FSIZE)[0], r.getrlimit(r.RLIMIT_CORE)[0])"
    )
    results = run_many([code] * 4, limits, workers=4)  # from a thread pool
    expected = f"3 {700 * 1024 * 1024} {5 * 1024 * 1024} 0"
    assert [r.stdout.strip() for r in results] == [expected] * 4
    assert len(calls) == 4 and all(c.get("preexec_fn") is None for c in calls)


def test_sample_cannot_raise_its_limits():
    code = "import resource as r\nr.setrlimit(r.RLIMIT_CPU, (100, 100))\nprint('raised')"
    r = run_python(code, FAST)
    assert r.status == "failed" and "raised" not in r.stdout
    assert f"{REFUSED} resource.setrlimit is not allowed" in r.stderr


@pytest.fixture
def listener():
    """A real TCP server on 127.0.0.1 that records whether anything connected."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.5)
    yield srv

    srv.close()


def _accepted(srv: socket.socket) -> bool:
    try:
        conn, _ = srv.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


@pytest.mark.parametrize(
    "template",
    [
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "print('connected')",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)\n"
        "print('connected')",
        "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\nprint('connected')",
    ],
)
def test_network_is_refused_by_the_guard(listener, template):
    port = listener.getsockname()[1]
    r = run_python(template.format(port=port), FAST)
    assert r.status == "failed" and "connected" not in r.stdout
    assert f"{REFUSED} socket." in r.stderr
    assert not _accepted(listener)  # the server on the host saw no connection


def test_dns_is_refused_by_the_guard():
    r = run_python("import socket\nsocket.getaddrinfo('localhost', 80)\nprint('resolved')", FAST)
    assert "resolved" not in r.stdout and f"{REFUSED} socket.getaddrinfo" in r.stderr


def test_network_blocked_by_namespace_alone(listener):
    # the namespace layer on its own (a raw interpreter, no guard): the host's loopback is not
    # reachable from an empty network namespace
    if not namespace_prefix():
        assert not REQUIRE_BWRAP, "unshare -n -p does not run here (CI requires it)"
        pytest.skip("unshare unavailable on this host; the audit hook still blocks sockets")
    port = listener.getsockname()[1]
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
    out = subprocess.run([*namespace_prefix(), sys.executable, "-c", code], capture_output=True)
    assert out.returncode != 0 and not _accepted(listener)


def test_bwrap_alone_blocks_writes_and_network(tmp_path, listener):
    """The bubblewrap layer with no guard: the file system is read-only outside the folder."""
    if not bwrap_works():
        assert not REQUIRE_BWRAP, "bubblewrap is not installed or cannot run here (CI requires it)"
        pytest.skip("bubblewrap is not installed or cannot run here")
    target = tmp_path / "outside.txt"
    target.write_text("keep")
    work = tmp_path / "work"
    work.mkdir()
    port = listener.getsockname()[1]
    write = f"open({str(target)!r}, 'w').write('gone')"
    out = subprocess.run(
        [*bwrap_prefix(work), sys.executable, "-c", write], capture_output=True, text=True
    )
    assert out.returncode != 0 and "Read-only file system" in out.stderr
    assert target.read_text() == "keep"
    connect = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
    out = subprocess.run([*bwrap_prefix(work), sys.executable, "-c", connect], capture_output=True)
    assert out.returncode != 0 and not _accepted(listener)
    inside = subprocess.run(
        [*bwrap_prefix(work), sys.executable, "-c", "open('x', 'w').write('1')"],
        capture_output=True,
    )
    assert inside.returncode == 0 and (work / "x").read_text() == "1"


# Bounded fork bombs whose children also try to leave the process group (setsid), so that a
# sandbox that failed would leave processes behind instead of taking the host down.
_FORKS = [
    (
        "os.fork",
        "import os, time\nfor _ in range(50):\n    if os.fork() == 0:\n"
        "        os.setsid()\n        time.sleep(60)\n        os._exit(0)\nprint('forked')",
    ),
    (
        "subprocess.Popen",
        "import subprocess\nfor _ in range(50):\n"
        "    subprocess.Popen(['sleep', '60'], start_new_session=True)\nprint('forked')",
    ),
    (
        "os.fork",
        "import multiprocessing as mp, time\n"
        "ps = [mp.Process(target=time.sleep, args=(60,)) for _ in range(50)]\n"
        "[p.start() for p in ps]\nprint('forked')",
    ),
    (
        "_posixsubprocess.fork_exec",
        "import multiprocessing as mp, time\nctx = mp.get_context('spawn')\n"
        "ps = [ctx.Process(target=time.sleep, args=(60,)) for _ in range(5)]\n"
        "[p.start() for p in ps]\nprint('forked')",
    ),
]


@pytest.mark.parametrize(("event", "code"), _FORKS)
def test_fork_bomb_is_refused_and_nothing_escapes(event, code):
    r = run_python(code, FAST)
    assert r.status == "failed" and "forked" not in r.stdout
    assert f"{REFUSED} {event} is not allowed" in r.stderr
    # escaped-process check: no process of this run is alive, and none had left the group
    assert marked_processes(r.run_id) == {} and r.escaped == 0
    # the host is fine: the next sample still runs
    assert run_python("print(1)", FAST).passed


def test_sweep_kills_processes_that_left_the_group():
    """The sweep itself, on real escaped processes (started here, outside any sandbox)."""
    run_id = "test-sweep-" + os.urandom(4).hex()
    env = {**os.environ, "MATRIX_SANDBOX_RUN": run_id}
    procs = [subprocess.Popen(["sleep", "60"], env=env, start_new_session=True) for _ in range(3)]
    try:
        assert len(marked_processes(run_id)) == 3
        assert sandbox.sweep(run_id, group=-1) == 3
        for p in procs:
            assert p.wait(timeout=5) == -9
        assert marked_processes(run_id) == {}
    finally:
        for p in procs:
            p.kill()


def test_files_land_in_a_private_temp_dir():
    code = (
        "import os, shutil\nopen('x.txt','w').write('1')\nos.mkdir('d')\n"
        "os.replace('x.txt', 'd/y.txt')\nos.chmod('d/y.txt', 0o600)\nshutil.rmtree('d')\n"
        "import tempfile\ntempfile.NamedTemporaryFile().write(b'1')\nprint(os.getcwd())"
    )
    r = run_python(code, FAST)
    assert r.passed and "matrix-sandbox-" in r.stdout


# Each mutation of a file or folder outside the sample's folder, with the event refused.
_MUTATIONS = [
    ("open", "open(T, 'w').write('gone')"),
    ("open", "open(T, 'a').write('gone')"),
    ("open", "open(T, 'r+').write('gone')"),
    ("open", "os.close(os.open(T, os.O_WRONLY | os.O_TRUNC))"),
    ("os.remove", "os.remove(T)"),
    ("os.remove", "os.unlink(T)"),
    ("os.remove", "pathlib.Path(T).unlink()"),
    ("os.rename", "os.rename(T, 'here.txt')"),
    ("os.rename", "os.replace('mine.txt', T)"),
    ("shutil.move", "shutil.move(T, 'here.txt')"),
    ("os.chmod", "os.chmod(T, 0o777)"),
    ("os.chown", "os.chown(T, 1, 1)"),
    ("os.truncate", "os.truncate(T, 0)"),
    ("os.utime", "os.utime(T, (0, 0))"),
    ("shutil.rmtree", "shutil.rmtree(D)"),
    ("os.rmdir", "os.rmdir(E)"),
    ("os.mkdir", "os.mkdir(os.path.join(D, 'new'))"),
    ("os.link", "os.link(T, 'hard.txt')"),
    ("os.symlink", "os.symlink('mine.txt', os.path.join(D, 'link'))"),
    ("open", "os.symlink(T, 'link.txt')\nopen('link.txt', 'w').write('gone')"),
    ("open", "os.chdir(D)\nopen('outside.txt', 'w').write('gone')"),
    (
        "opening directory",
        "fd = os.open(D, os.O_RDONLY)\nos.open('outside.txt', os.O_WRONLY, dir_fd=fd)",
    ),
    ("shutil.copyfile", "shutil.copyfile('mine.txt', T)"),
    ("os.mkfifo", "os.mkfifo(os.path.join(D, 'fifo'))"),
]


@pytest.mark.parametrize(("event", "action"), _MUTATIONS)
def test_no_file_mutation_outside_the_folder(tmp_path, event, action):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "empty").mkdir()
    target = outside / "outside.txt"
    target.write_text("keep")
    os.chmod(target, 0o644)
    before = sorted(p.name for p in outside.iterdir()), target.stat().st_mode, target.stat().st_uid
    code = (
        f"import os, pathlib, shutil\nT, D = {str(target)!r}, {str(outside)!r}\n"
        f"E = os.path.join(D, 'empty')\nopen('mine.txt', 'w').write('mine')\n{action}\n"
        "print('mutated')"
    )
    r = run_python(code, FAST)
    assert r.status == "failed" and "mutated" not in r.stdout
    assert f"{REFUSED} {event}" in r.stderr
    assert target.read_text() == "keep"
    after = sorted(p.name for p in outside.iterdir()), target.stat().st_mode, target.stat().st_uid
    assert after == before


def test_run_many_keeps_order():
    res = run_many(["print(1)", "raise SystemExit(3)", "print(3)"], FAST, workers=2)
    assert [r.status for r in res] == ["passed", "failed", "passed"]


def test_run_python_is_safe_from_many_threads():
    """Many samples started at once from threads all run under their own limits."""
    results: list = [None] * 8

    def one(i):
        results[i] = run_python(f"print({i})", FAST)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(8)]
