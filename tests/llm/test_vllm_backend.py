"""The vllm backend: a clear error without vLLM, and real generation with vLLM's CPU build
(run in the server venv, since vLLM pins its own torch)."""

import json
import os
import subprocess

import pytest

from matrix.llm.errors import LLMError
from matrix.llm.protocol import Sampling
from matrix.llm.server import REPO, vllm_python
from matrix.llm.vllm_backend import VLLMBackend


def test_missing_vllm_names_the_server_command():
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed in this environment")
    except ImportError:
        pass
    backend = VLLMBackend("embedded:smollm2-135m-instruct")  # building it needs nothing
    with pytest.raises(LLMError, match=r"make llm-server MODEL="):
        backend.generate([[{"role": "user", "content": "hi"}]], Sampling())


SCRIPT = r"""
import json, sys
from matrix.llm.errors import ContextOverflow
from matrix.llm.protocol import Sampling
from matrix.llm.vllm_backend import VLLMBackend


def main():
    b = VLLMBackend(sys.argv[1], max_model_len=1024, dtype="bfloat16")
    chats = [[{"role": "user", "content": q}] for q in ["Name a fruit.", "What colour is grass?"]]
    plain = b.generate(chats, Sampling(max_new_tokens=12))
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    guided = b.generate([[{"role": "user", "content": "Your name as JSON"}]],
                        Sampling(max_new_tokens=40, json_schema=schema))
    sampled = [b.generate(chats[:1], Sampling(max_new_tokens=12, temperature=1.0, seed=s))[0].text
               for s in (1, 1, 2)]
    # Ten seeded prompts of ~860 tokens overflow one step's token budget (vLLM's defaults are
    # 2,048 or 8,192): with chunked prefill one would be split, and the CPU engine would die
    # rewinding its generator ("CPU Generator does not use offset").
    long = [[{"role": "user", "content": f"({i}) " + "word " * 850 + "Summarize."}]
            for i in range(10)]
    seeded_long = b.generate(long, Sampling(max_new_tokens=4, temperature=0.7, top_p=0.9, seed=0))
    try:
        b.generate(chats + [[{"role": "user", "content": "word " * 2000}]], Sampling(max_new_tokens=8))
        overflow = None
    except ContextOverflow as e:
        overflow = e.row
    print("RESULT" + json.dumps({
        "plain": [[c.text, c.prompt_tokens, c.completion_tokens] for c in plain],
        "guided": guided[0].text, "sampled": sampled, "overflow_row": overflow,
        "seeded_long": [c.completion_tokens for c in seeded_long]}))


if __name__ == "__main__":  # vLLM's engine process is spawned and re-imports this file
    main()
"""


def run_in_vllm_venv(script: str, tmp_path, timeout: float = 900) -> dict:
    """Run `script` as a file (spawned replicas re-import it) with the vLLM venv's interpreter
    and this project on its path; returns the JSON it prints after RESULT."""
    from matrix.llm.embedded import smollm2_hf_dir

    model = str(smollm2_hf_dir())
    try:
        py = vllm_python()
    except LLMError:
        subprocess.run([str(REPO / "scripts/setup_llm_server.sh")], check=True)
        py = vllm_python()
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1"}
    path = tmp_path / "script.py"
    path.write_text(script)
    run = subprocess.run(
        [str(py), str(path), model], capture_output=True, text=True, env=env, timeout=timeout
    )
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line, run.stderr[-3000:]
    return json.loads(line[len("RESULT") :])


@pytest.mark.server
def test_offline_engine_on_cpu(tmp_path):
    res = run_in_vllm_venv(SCRIPT, tmp_path)
    for text, prompt_tokens, completion_tokens in res["plain"]:
        assert text and prompt_tokens > 5 and 0 < completion_tokens <= 12
    assert isinstance(json.loads(res["guided"]).get("name"), str)  # valid JSON by construction
    assert res["sampled"][0] == res["sampled"][1]  # same seed, same sample
    assert res["overflow_row"] == 2
    assert len(res["seeded_long"]) == 10 and all(n > 0 for n in res["seeded_long"])


DP_SCRIPT = r"""
import json, sys
from matrix.llm.errors import ContextOverflow
from matrix.llm.protocol import Sampling
from matrix.llm.vllm_backend import VLLMBackend


def main():
    single = VLLMBackend(sys.argv[1], max_model_len=1024, dtype="bfloat16")
    chats = [[{"role": "user", "content": q}] for q in ["Name a fruit.", "What colour is grass?"]]
    expected = [c.prompt_tokens for c in single.generate(chats, Sampling(max_new_tokens=4))]
    del single
    dp = VLLMBackend(sys.argv[1], max_model_len=1024, dtype="bfloat16", data_parallel_size=2)
    try:
        out = dp.generate(chats + chats[:1], Sampling(max_new_tokens=8))
        try:
            dp.generate(chats + [[{"role": "user", "content": "word " * 2000}]],
                        Sampling(max_new_tokens=8))
            overflow = None
        except ContextOverflow as e:
            overflow = e.row
    finally:
        dp.close()
    print("RESULT" + json.dumps({"expected": expected, "overflow_row": overflow,
                                 "prompt_tokens": [c.prompt_tokens for c in out],
                                 "texts": [c.text for c in out]}))


if __name__ == "__main__":  # replicas are spawned processes: they re-import this file
    main()
"""


@pytest.mark.server
def test_data_parallel_replicas_on_cpu(tmp_path):
    res = run_in_vllm_venv(DP_SCRIPT, tmp_path)
    # Two engine processes, the batch split between them, rows back in input order.
    assert res["prompt_tokens"] == [*res["expected"], res["expected"][0]]
    assert all(res["texts"])
    assert res["overflow_row"] == 2  # re-addressed from the second replica's shard
