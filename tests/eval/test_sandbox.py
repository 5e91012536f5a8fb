import pytest

from matrix.eval.sandbox import Limits, namespace_prefix, run_many, run_python

FAST = Limits(timeout_s=5, cpu_s=2, memory_mb=512)


def test_correct_solution_passes():
    r = run_python("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('ok')", FAST)
    assert r.passed and r.stdout.strip() == "ok"


def test_failing_assertion_fails():
    r = run_python("assert 1 == 2", FAST)
    assert r.status == "failed" and "AssertionError" in r.stderr


def test_infinite_loop_times_out():
    r = run_python("while True:\n    pass", FAST)
    assert r.status == "timeout" and not r.passed


def test_sleeping_forever_hits_wall_timeout():
    r = run_python("import time\ntime.sleep(60)", Limits(timeout_s=1, cpu_s=2))
    assert r.status == "timeout"


def test_memory_hog_fails():
    r = run_python("x = bytearray(4 * 1024 ** 3)\nprint('allocated')", FAST)
    assert r.status == "failed" and "allocated" not in r.stdout
    assert "MemoryError" in r.stderr


@pytest.mark.parametrize(
    "code",
    [
        "import socket\ns = socket.create_connection(('1.1.1.1', 80), timeout=2)\nprint('connected')",
        "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)\nprint('connected')",
        "import socket\nsocket.getaddrinfo('example.com', 80)\nprint('connected')",
    ],
)
def test_network_is_blocked(code):
    r = run_python(code, FAST)
    assert r.status == "failed" and "connected" not in r.stdout


def test_network_blocked_by_namespace_alone():
    # the namespace layer on its own (bypassing the audit hook with a raw interpreter run)
    if not namespace_prefix():
        pytest.skip("unshare unavailable on this host; the audit hook still blocks sockets")
    import subprocess

    code = "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)"
    out = subprocess.run([*namespace_prefix(), "python3", "-c", code], capture_output=True)
    assert out.returncode != 0


@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True:\n    os.fork()",
        "import subprocess\nwhile True:\n    subprocess.Popen(['sleep', '100'])",
        "import multiprocessing as mp\nps=[mp.Process(target=lambda: None) for _ in range(100)]\n"
        "[p.start() for p in ps]",
    ],
)
def test_fork_bomb_costs_one_failed_sample(code):
    r = run_python(code, FAST)
    assert r.status in ("failed", "timeout") and not r.passed
    # the host is fine: the next sample still runs
    assert run_python("print(1)", FAST).passed


def test_files_land_in_a_private_temp_dir():
    r = run_python("import os\nopen('x.txt','w').write('1')\nprint(os.getcwd())", FAST)
    assert r.passed and "matrix-sandbox-" in r.stdout


def test_run_many_keeps_order():
    res = run_many(["print(1)", "raise SystemExit(3)", "print(3)"], FAST, workers=2)
    assert [r.status for r in res] == ["passed", "failed", "passed"]
