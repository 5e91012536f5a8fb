import multiprocessing as mp
from pathlib import Path

from matrix.llm.cache import CallCache, batch_keys, model_identity, request_key
from matrix.llm.protocol import Completion, Sampling

CHAT = [{"role": "user", "content": "hi"}]


def test_key_depends_on_what_changes_the_answer():
    greedy = Sampling(max_new_tokens=8)
    assert request_key("m", CHAT, greedy) == request_key("m", CHAT, Sampling(max_new_tokens=8))
    assert request_key("m", CHAT, greedy) != request_key("m2", CHAT, greedy)
    assert request_key("m", CHAT, greedy) != request_key("m", CHAT, Sampling(max_new_tokens=9))
    other_chat = [{"role": "user", "content": "hi!"}]
    assert request_key("m", CHAT, greedy) != request_key("m", other_chat, greedy)
    # A greedy answer does not depend on the seed; a sampled one does.
    assert request_key("m", CHAT, Sampling(seed=1)) == request_key("m", CHAT, Sampling(seed=2))
    hot1, hot2 = Sampling(temperature=0.7, seed=1), Sampling(temperature=0.7, seed=2)
    assert request_key("m", CHAT, hot1) != request_key("m", CHAT, hot2)
    assert request_key("m", CHAT, Sampling(stop=("a",))) != request_key("m", CHAT, Sampling())
    assert request_key("m", CHAT, Sampling(json_schema=True)) != request_key("m", CHAT, Sampling())


def test_sampled_copies_in_a_batch_are_distinct_requests_greedy_copies_are_not():
    hot = batch_keys("m", [CHAT, CHAT, CHAT], Sampling(temperature=1.0))
    assert len(set(hot)) == 3
    assert batch_keys("m", [CHAT, CHAT], Sampling(temperature=1.0)) == hot[:2]  # stable
    assert len(set(batch_keys("m", [CHAT, CHAT], Sampling()))) == 1


def test_roundtrip_and_errors_are_not_cached(tmp_path):
    cache = CallCache.in_dir(tmp_path)
    ok = Completion("yes", 3, 1, "stop", "m")
    cache.put_many([("a", ok), ("b", Completion("", 3, 0, "error", "m"))])
    assert cache.get_many(["a", "b", "c"]) == {"a": ok}
    assert len(CallCache.in_dir(tmp_path)) == 1  # persisted, visible to a new connection


def _writer(path: str, worker: int, n: int) -> None:
    cache = CallCache(path)
    for i in range(n):
        cache.put(f"{worker}-{i}", Completion(f"{worker}/{i}", 1, 1, "stop", "m"))


def test_several_processes_share_one_file(tmp_path):
    path = str(tmp_path / "calls.sqlite")
    CallCache(path)  # create the schema first
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 50)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = CallCache(path)
    assert len(cache) == 150
    assert cache.get_many(["2-49"])["2-49"].text == "2/49"


def test_model_identity_tracks_local_weights(tmp_path: Path):
    assert model_identity("gpt-4o-mini") == "gpt-4o-mini"
    (tmp_path / "model.safetensors").write_bytes(b"1")
    first = model_identity(str(tmp_path))
    assert first.startswith(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"22")  # retrained in place
    assert model_identity(str(tmp_path)) != first
