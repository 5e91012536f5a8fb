"""Secrets stay out of outputs, logs and the console; appends and resumes survive a torn last
line."""

import contextlib
import errno
import json
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from matrix.common.io import JsonlLog, StorageError, read_json, read_jsonl, write_json
from matrix.common.secret_guard import guard
from matrix.common.secrets import is_secret_key, scrub, secret_values
from matrix.core.provenance import resolved_config
from matrix.eval.run import run_evaluate
from matrix.llm.errors import LLMError
from matrix.llm.openai_backend import OpenAIBackend
from matrix.llm.protocol import Sampling
from matrix.llm.roles import Roles
from matrix.sim.run import run_simulate
from tests.conftest import CONF, RANDOM_MODEL_OVERRIDES, ROOT, compose, tiny_llm_overrides
from tests.core.kill_resume import complete_rows, finish, stage_env, start
from tests.doubles import PromptHashLLM, write_sim_dir

SECRET = "sk-test-0123456789abcdef"
ENV_KEY = "sk-env-9f8e7d6c5b4a39281706"  # the backend's api_key_env variable holds this
CLI_KEY = "cli-api-key-5e4d3c2b1a0f"  # given on the command line as a config value
CLI_TOKEN = "cli-token-0a1b2c3d4e5f6789"  # given on the command line into the job's environment


def test_api_key_from_env_never_reaches_manifest_or_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("MATRIX_TEST_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose(
        "simulate",
        [
            "debug=tiny",
            f"paths.runs_dir={tmp_path}",
            f"paths.cache_dir={tmp_path}/c",
            "llm=openai_compatible",
            "llm.backends.api.model=served",
            # a key sent in the request body of an OpenAI-compatible server
            "+llm.backends.api.extra_body.api_key=${oc.env:MATRIX_TEST_API_KEY}",
        ],
    )
    assert cfg.llm.backends.api.extra_body.api_key == SECRET  # the config does carry it
    run_simulate(cfg, Roles(cfg.llm, {"api": PromptHashLLM()}))
    out = tmp_path / "tiny" / "simulate"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["llm"]["backends"]["api"]["extra_body"]["api_key"] == "***"
    assert SECRET not in json.dumps(resolved_config(cfg))  # what W&B receives as its config
    files = [p for p in out.rglob("*") if p.is_file()]
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks


def test_torn_last_line_is_dropped_on_resume(tmp_path):
    log = JsonlLog(tmp_path / "rows.jsonl")
    log.append([{"i": 0}, {"i": 1}])
    with open(log.path, "ab") as f:  # a process killed mid-write leaves half a row
        f.write(b'{"i": 2, "text": "half')
    assert log.count() == 2
    assert log.truncate(2) == 1
    log.append([{"i": 2}])
    assert read_jsonl(log.path) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_torn_line_inside_the_committed_rows_is_an_error(tmp_path):
    log = JsonlLog(tmp_path / "rows.jsonl")
    log.path.write_bytes(b'{"i": 0}\n{"i": 1')
    try:
        log.truncate(2)
    except ValueError as e:
        assert "expects 2 rows, only 1" in str(e)
    else:
        raise AssertionError("a checkpoint past the torn line must not pass")


def test_append_after_a_torn_tail_starts_a_fresh_line(tmp_path):
    """metrics.jsonl has no checkpoint: a killed process's half row must not fuse with the
    first row the restarted process appends."""
    log = JsonlLog(tmp_path / "metrics.jsonl")
    log.append([{"i": 0}])
    with open(log.path, "ab") as f:
        f.write(b'{"i": 1, "lo')
    log.append([{"i": 2}])
    assert read_jsonl(log.path) == [{"i": 0}, {"i": 2}]
    assert log.drop_torn_tail() == 0  # a whole file is left alone


def test_evaluate_resumes_past_a_torn_answer_line(tmp_path):
    """Evaluate's answers file is its own commit record (rows keyed by item id)."""
    cfg = compose(
        "evaluate",
        ["debug=tiny", f"paths.runs_dir={tmp_path}", "logger=none", "eval.chunk_size=1"],
    )
    roles = Roles(cfg.llm, {"smollm2": PromptHashLLM()})
    run_evaluate(cfg, roles)
    answers = tmp_path / "tiny" / "evaluate" / "alpaca_eval2" / "answers.jsonl"
    whole = answers.read_bytes()
    lines = whole.splitlines(keepends=True)
    answers.write_bytes(b"".join(lines[:2]) + lines[2][:15])  # killed while writing row 3
    run_evaluate(cfg, Roles(cfg.llm, {"smollm2": PromptHashLLM()}))
    assert answers.read_bytes() == whole


def test_atomic_writes_get_the_users_usual_file_mode(tmp_path):
    """The temp file behind an atomic write is owner-only; the written file must not be."""
    import os

    from matrix.common.io import write_json

    write_json(tmp_path / "state.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o666 & ~umask


# --- which keys name a secret -----------------------------------------------------------------


def _conf_keys() -> set[str]:
    keys: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                keys.add(str(k))
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for f in Path(CONF).rglob("*.yaml"):
        walk(yaml.safe_load(f.read_text(encoding="utf-8")))
    return keys


def test_no_key_defined_under_conf_is_taken_for_a_secret():
    """The rule runs over every key conf/ defines: none holds a secret (keys come from the
    environment), and the near misses must stay readable in manifests and docs."""
    keys = _conf_keys()
    assert {"max_tokens", "max_new_tokens", "num_key_value_heads", "api_key_env"} <= keys
    assert len(keys) > 200
    assert sorted(k for k in keys if is_secret_key(k)) == []


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "apiKey",
        "apikey",
        "hf_token",
        "access_token",
        "client_secret",
        "password",
        "db_password",
        "secret_key",
        "key",
        "OPENAI_API_KEY",
        "HF_TOKEN",
        "llm.backends.x.api_key",
    ],
)
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "max_tokens",
        "max_new_tokens",
        "tokenizer",
        "num_key_value_heads",
        "key_by",
        "api_key_env",
        "pad_token",
        "eos_token",
        "sort_key",
        "cache_key",
        "token_id",
        "TOKENIZERS_PARALLELISM",
        "PWD",
        "SSH_AUTH_SOCK",
    ],
)
def test_keys_that_only_look_like_secrets(key):
    assert not is_secret_key(key)


def test_secret_values_come_from_config_overrides_and_the_named_variable():
    env = {"MY_VAR": ENV_KEY, "HF_TOKEN": "hf_abcdefghijklmnop", "HOME": "/root/home/dir"}
    cfg = {
        "llm": {"backends": {"api": {"api_key_env": "MY_VAR", "api_key": CLI_KEY}}},
        "model": {"max_tokens": 123456789},
    }
    argv = [f"hydra.job.env_set.OPENAI_API_KEY={CLI_TOKEN}", "run.name=short-but-long-enough"]
    found = secret_values(cfg, argv, env)
    assert found == {ENV_KEY, CLI_KEY, CLI_TOKEN, "hf_abcdefghijklmnop"}


# --- every channel, through the real stage scripts ---------------------------------------------


class _EchoAuth401(BaseHTTPRequestHandler):
    """Answers everything with 401 and an error body that echoes the Authorization header,
    as some servers do; records the headers it saw."""

    seen: list[str] = []

    def log_message(self, *args):
        pass

    def _deny(self):
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        auth = self.headers.get("Authorization") or ""
        type(self).seen.append(auth)
        body = json.dumps(
            {"error": {"message": f"Incorrect API key provided: {auth}", "code": "invalid_api_key"}}
        ).encode()
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _deny


@pytest.fixture
def auth_echo_server():
    handler = type("Handler", (_EchoAuth401,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler.seen
    server.shutdown()
    server.server_close()


def _leaks(out: subprocess.CompletedProcess, root: Path, secrets: tuple[str, ...]) -> list[str]:
    found = [
        f"{name}: {s}"
        for name, text in (("stdout", out.stdout), ("stderr", out.stderr))
        for s in secrets
        if s in text
    ]
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        data = f.read_bytes()
        found += [f"{f.relative_to(root)}: {s}" for s in secrets if s.encode() in data]
    return found


def _run(script: str, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MATRIX_NO_PROGRESS": "1",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "MATRIX_TEST_API_KEY": ENV_KEY,
    }
    flags = [o for o in overrides if o.startswith("-")]  # Hydra wants -m before overrides
    overrides = tuple(o for o in overrides if not o.startswith("-"))
    cmd = [
        sys.executable,
        str(ROOT / script),
        *flags,
        "debug=tiny",
        f"paths.runs_dir={tmp_path}/runs",
        f"paths.cache_dir={tmp_path}/cache",
        *overrides,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_a_401_that_echoes_the_key_leaks_it_nowhere(tmp_path, auth_echo_server):
    """evaluate.py as a multirun against a server that refuses the key and echoes it back: the
    key from the environment and the ones on the command line are in no output channel (console,
    job log, exception text), no .hydra/ file and not in multirun.yaml."""
    url, seen = auth_echo_server
    out = _run(
        "evaluate.py",
        tmp_path,
        "-m",
        "llm=openai_compatible",
        "llm.backends.api.model=gpt-test",
        f"llm.backends.api.base_url={url}",
        "llm.backends.api.api_key_env=MATRIX_TEST_API_KEY",
        "llm.backends.api.max_retries=0",
        f"+llm.backends.unused.api_key={CLI_KEY}",
        f"+hydra.job.env_set.OTHER_SERVICE_TOKEN={CLI_TOKEN}",
        "eval.benchmarks.alpaca_eval2.limit=1,2",  # two jobs, so the launcher lists overrides
    )
    assert out.returncode != 0
    assert f"Bearer {ENV_KEY}" in seen  # the key did reach the server, which echoed it
    assert "refused the API key from $MATRIX_TEST_API_KEY" in out.stderr, out.stderr[-3000:]
    assert "Incorrect API key provided: Bearer ***" in out.stderr
    assert "+llm.backends.unused.api_key=***" in out.stdout  # Hydra's list of the sweep's jobs
    hydra_files = list(tmp_path.rglob(".hydra/*.yaml")) + list(tmp_path.rglob("multirun.yaml"))
    assert len(hydra_files) >= 4 and list(tmp_path.rglob("*.log"))
    for f in hydra_files:
        yaml.safe_load(f.read_text(encoding="utf-8"))  # masked, still YAML
    assert not _leaks(out, tmp_path, (ENV_KEY, CLI_KEY, CLI_TOKEN))


def test_a_finished_stage_with_keys_on_the_command_line_leaks_them_nowhere(
    tmp_path, tiny_model_dir
):
    """evaluate.py to the end, W&B offline: manifest, the W&B run (config and the command line
    it records), metrics, .hydra/ files, the job log and the console are free of every key."""
    out = _run(
        "evaluate.py",
        tmp_path,
        f"llm.backends.smollm2.model={tiny_model_dir}",
        f"+llm.backends.unused.api_key={CLI_KEY}",
        f"+hydra.job.env_set.OTHER_SERVICE_TOKEN={CLI_TOKEN}",
        "eval.benchmarks.alpaca_eval2.limit=2",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    stage = tmp_path / "runs" / "tiny" / "evaluate"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["config"]["llm"]["backends"]["unused"]["api_key"] == "***"
    assert list(stage.rglob("run-*.wandb"))
    config_yaml = yaml.safe_load(next(stage.rglob(".hydra/config.yaml")).read_text())
    assert config_yaml["llm"]["backends"]["unused"]["api_key"] == "***"
    hydra_yaml = yaml.safe_load(next(stage.rglob(".hydra/hydra.yaml")).read_text())
    assert hydra_yaml["hydra"]["job"]["env_set"]["OTHER_SERVICE_TOKEN"] == "***"
    assert not _leaks(out, tmp_path, (ENV_KEY, CLI_KEY, CLI_TOKEN))


def test_logs_and_error_text_in_process(monkeypatch, caplog, auth_echo_server):
    """Through logging (every handler, caplog's too) and the backend's own error text."""
    url, seen = auth_echo_server
    monkeypatch.setenv("MATRIX_TEST_API_KEY", ENV_KEY)
    guard({"llm": {"backends": {"api": {"api_key_env": "MATRIX_TEST_API_KEY"}}}})
    log = logging.getLogger("matrix.test_secrets")
    with caplog.at_level(logging.INFO):
        log.info("calling with %s", ENV_KEY)
        try:
            raise RuntimeError(f"server said: {ENV_KEY}")
        except RuntimeError:
            log.exception("failed")
        backend = OpenAIBackend("m", base_url=url, api_key_env="MATRIX_TEST_API_KEY", max_retries=0)
        with pytest.raises(LLMError) as err:
            backend.generate([[{"role": "user", "content": "hi"}]], Sampling(max_new_tokens=4))
    assert f"Bearer {ENV_KEY}" in seen
    assert ENV_KEY not in str(err.value) and "Bearer ***" in str(err.value)
    text = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert "calling with ***" in text and "server said: ***" in text
    assert ENV_KEY not in text
    assert scrub(f"x Bearer {'z' * 20} y") == "x Bearer *** y"  # a credential we never knew


def test_what_hydra_prints_before_the_job_is_masked_too(tmp_path):
    """An unknown flag makes Hydra's argparse print the overrides after it, and `--cfg job`
    prints the config, both before any job (or Hydra callback) runs: the entry script's own
    guard masks them."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        str(ROOT / "simulate.py"),
        "debug=tiny",
        "--not-a-flag",  # after an override: argparse rejects the overrides that follow
        f"+llm.backends.x.api_key={CLI_KEY}",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr, out.stderr
    assert "+llm.backends.x.api_key=***" in out.stderr
    assert not _leaks(out, tmp_path, (CLI_KEY,))
    # `--cfg job` prints the composed config, the key in it
    cmd = [sys.executable, str(ROOT / "simulate.py"), "--cfg", "job", cmd[-1]]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0 and "api_key: ***" in out.stdout, out.stderr
    assert not _leaks(out, tmp_path, (CLI_KEY,))


def test_a_key_override_never_names_a_sweep_arm():
    from matrix.core.sweep import arm_name

    overrides = [f"+generator.api_key={CLI_KEY}", "communication=none"]
    assert arm_name(overrides, ["communication"]) == "communication=none"


# --- a full disk or a read-only run folder ----------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real size-limited folder: an 8 MiB tmpfs mounted at tmp_path/disk (root only; skipped
    with the reason where mounting is not permitted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.skip(
            f"cannot mount a size-limited tmpfs here: {out.stderr.strip() or out.returncode}"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path) -> Path:
    """Take every free byte of `disk` (a filler file written until ENOSPC)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    with contextlib.suppress(OSError), open(filler, "ab", buffering=0) as f:  # the last bytes
        while True:
            f.write(b"\0")
    return filler


def _remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True)


def test_full_disk_keeps_the_old_file_and_the_committed_rows(small_disk):
    state = small_disk / "run" / "state.json"
    write_json(state, {"rows": 2})
    rows = JsonlLog(small_disk / "run" / "rows.jsonl")
    rows.append([{"i": 0}, {"i": 1}])
    before = rows.path.read_bytes()
    _fill(small_disk)
    with pytest.raises(StorageError) as err:
        write_json(state, {"rows": 3, "pad": "x" * 100_000})
    assert str(state) in str(err.value) and "no space left" in str(err.value)
    assert "paths.runs_dir" in str(err.value) and "df -h" in str(err.value)
    assert json.loads(state.read_text()) == {"rows": 2}
    assert sorted(p.name for p in state.parent.iterdir()) == ["rows.jsonl", "state.json"]
    with pytest.raises(StorageError):  # a batch the disk takes only part of
        rows.append([{"i": i, "text": "y" * 1000} for i in range(2, 200)])
    assert rows.path.read_bytes() == before  # no partial row left behind


def test_read_only_run_folder_is_refused_and_left_as_it_was(small_disk):
    state = small_disk / "run" / "state.json"
    write_json(state, {"rows": 2})
    rows = JsonlLog(small_disk / "run" / "rows.jsonl")
    rows.append([{"i": 0}])
    _remount(small_disk, "ro")
    with pytest.raises(StorageError) as err:
        write_json(state, {"rows": 3})
    assert "read-only" in str(err.value) and "EROFS" in str(err.value)
    assert str(state) in str(err.value)
    with pytest.raises(StorageError, match="read-only"):
        rows.append([{"i": 1}])
    with pytest.raises(StorageError, match="read-only"):
        JsonlLog(small_disk / "new" / "rows.jsonl")
    assert json.loads(state.read_text()) == {"rows": 2} and rows.read() == [{"i": 0}]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_injected_write_errors_leave_the_committed_state(tmp_path, monkeypatch, code):
    """The same guarantees where no size-limited folder can be mounted: the OSError is raised
    by fsync, after the bytes went out, so the undo is what keeps the files whole."""
    state = tmp_path / "state.json"
    write_json(state, {"rows": 1})
    rows = JsonlLog(tmp_path / "rows.jsonl")
    rows.append([{"i": 0}])

    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageError) as err:
        write_json(state, {"rows": 2})
    assert str(state) in str(err.value) and errno.errorcode[code] in str(err.value)
    with pytest.raises(StorageError):
        rows.append([{"i": 1}, {"i": 2}])
    monkeypatch.undo()
    assert json.loads(state.read_text()) == {"rows": 1}
    assert rows.read() == [{"i": 0}] and sorted(p.name for p in tmp_path.iterdir()) == [
        "rows.jsonl",
        "state.json",
    ]


def _generate_cmd(tmp_path, runs, sim, model_dir, name):
    return [
        sys.executable,
        str(ROOT / "generate.py"),
        "debug=tiny",
        f"paths.runs_dir={runs}",
        f"paths.cache_dir={tmp_path}/cache",
        f"run.name={name}",
        "logger=none",
        "llm.cache.enabled=false",
        *tiny_llm_overrides(model_dir),
        f"generate.simulation_dir={sim}",
        "generator=tiny",
        "generate.limit=null",
        "generate.batch_size=1",
        *RANDOM_MODEL_OVERRIDES,
        *(f"llm.roles.{r}.max_new_tokens=16" for r in ("generator", "responder", "rejecter")),
    ]


def test_generate_stopped_by_a_full_disk_resumes_to_the_same_rows(
    tmp_path, small_disk, tiny_model_dir
):
    """generate.py writes onto the small disk; once it has committed rows the disk is filled.
    It stops with exit 2 and a message naming the path and the fix, its checkpoint and rows
    are whole, and after space is freed the same command finishes with exactly the rows of a
    run that never hit the full disk."""
    sim = write_sim_dir(tmp_path / "sim")
    log = tmp_path / "log.txt"
    whole = start(_generate_cmd(tmp_path, tmp_path / "runs", sim, tiny_model_dir, "whole"), log)
    cmd = _generate_cmd(tmp_path, small_disk / "runs", sim, tiny_model_dir, "full")
    out = small_disk / "runs" / "full" / "generate"
    err = tmp_path / "full.txt"
    with open(err, "wb") as f:
        proc = subprocess.Popen(cmd, env=stage_env(), stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while complete_rows((out / "sets").glob("*.jsonl")) < 3:
        assert proc.poll() is None, err.read_text()[-3000:]
        assert time.monotonic() < deadline, "no rows after 240 s"
        time.sleep(0.01)
    filler = _fill(small_disk)
    assert proc.wait(240) == 2, err.read_text()[-3000:]
    text = err.read_text()
    assert "no space left on the device (ENOSPC)" in text and str(out) in text
    assert "paths.runs_dir" in text and text.rstrip().splitlines()[-1].startswith("error: ")
    st = read_json(out / "state.json")  # the last checkpoint: whole, and its rows are there
    for name, s in st["sets"].items():
        path = out / "sets" / f"{name}.jsonl"
        assert JsonlLog(path).count() >= s["rows"]
        assert not path.exists() or path.read_bytes().endswith(b"\n")  # no torn row
    filler.unlink()
    finish(start(cmd, log), log)
    finish(whole, log)
    ref = tmp_path / "runs" / "whole" / "generate"
    for name in ["sft.jsonl", "dpo.jsonl", *(f"sets/{p.name}" for p in (ref / "sets").glob("*"))]:
        a = read_jsonl(ref / name) if (ref / name).exists() else []
        assert read_jsonl(out / name) == a if (out / name).exists() else a == [], name
    assert read_json(out / "manifest.json")["counts"] == read_json(ref / "manifest.json")["counts"]


def test_a_read_only_runs_dir_stops_the_stage_before_it_writes(tmp_path, small_disk):
    """Hydra writes its run folder under paths.runs_dir before the stage starts: a read-only
    disk is reported in one message (exit 2) instead of Hydra's traceback."""
    (small_disk / "runs").mkdir()
    _remount(small_disk, "ro")
    cmd = [
        sys.executable,
        str(ROOT / "simulate.py"),
        "debug=tiny",
        f"paths.runs_dir={small_disk}/runs",
    ]
    out = subprocess.run(cmd, env=stage_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"{small_disk}/runs: cannot write, the folder is read-only" in out.stderr
    assert "Traceback" not in out.stderr


def test_llm_call_cache_on_a_full_disk_names_its_file_and_keeps_what_it_had(small_disk):
    from matrix.llm.cache import CallCache
    from matrix.llm.protocol import Completion

    cache = CallCache.in_dir(small_disk / "cache")
    first = Completion(text="kept", prompt_tokens=1, completion_tokens=1, model="m")
    cache.put("a", first)
    _fill(small_disk)
    big = [
        (f"k{i}", Completion(text="z" * 4000, prompt_tokens=1, completion_tokens=1, model="m"))
        for i in range(2000)
    ]
    with pytest.raises(StorageError) as err:
        cache.put_many(big)
    message = str(err.value)
    assert "llm_calls.sqlite" in message and "no space left" in message
    assert "llm.cache.dir" in message and "llm.cache.enabled=false" in message
    assert cache.get_many(["a", "k0"]) == {"a": first}
