"""The same simulate and generate work through a vLLM server and through the in-process
backend, in one run: wall time, tokens/s and their ratios.

Both paths run the real stages (`run_simulate`, then `run_generate` on that simulation) with
the same config (`debug=tiny` unless overridden), every role on the embedded SmolLM2-135M:
in process on transformers (`llm=smollm2_local`) or on a local vLLM OpenAI-compatible server
(`llm=smollm2_server`, started here from .venv-vllm exactly as `make llm-server` starts it).
The call cache is off, so every answer is computed; the order of the two paths alternates
between repeats so load drift hits both alike. Wall time is the whole stage (embeddings,
grouping and filters included, the same on both paths); tokens/s counts the tokens the stage's
ledger says the backend processed.

    python bench/server_vs_inprocess.py                       # debug=tiny, 1 repeat
    python bench/server_vs_inprocess.py --repeats 2 --base-url http://127.0.0.1:8000/v1
    python bench/server_vs_inprocess.py -o population.size=16   # any Hydra override
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("simulate", "generate")


def run_path(path: str, url: str | None, work: Path, overrides: list[str]) -> dict[str, dict]:
    """Simulate then generate on one path; per stage: seconds and the ledger's tokens."""
    from hydra import compose, initialize_config_dir

    from matrix.gen.run import run_generate
    from matrix.sim.run import run_simulate

    llm = ["llm=smollm2_local"] if url is None else [
        "llm=smollm2_server", f"llm.backends.server.base_url={url}"
    ]  # fmt: skip
    common = [
        "debug=tiny",
        *llm,
        "llm.cache.enabled=false",
        "logger=none",
        f"paths.runs_dir={work}",
        f"paths.cache_dir={work / 'cache'}",
        f"run.name={path}",
        *overrides,
    ]
    out: dict[str, dict] = {}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for stage, fn, extra in (
            ("simulate", run_simulate, []),
            ("generate", run_generate, [f"generate.simulation_dir={work / path / 'simulate'}"]),
        ):
            cfg = compose(stage, overrides=[*common, *extra])
            t0 = time.perf_counter()
            fn(cfg)
            seconds = time.perf_counter() - t0
            m = json.loads((work / path / stage / "manifest.json").read_text())
            total = m["llm"]["total"]
            out[stage] = {
                "seconds": seconds,
                "calls": total["calls"],
                "prompt_tokens": total["prompt_tokens"],
                "completion_tokens": total["completion_tokens"],
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--base-url", default=None, help="an already running server (else started)")
    ap.add_argument("-o", "--override", action="append", default=[], help="Hydra override")
    args = ap.parse_args()

    server = None
    url = args.base_url
    if url is None:
        from matrix.llm.server import LocalServer
        from tests.conftest import free_port

        server = LocalServer(free_port()).start()
        print(f"vLLM server ready in {server.wait_ready():.0f}s")
        url = server.base_url
    results: dict[str, list[dict]] = {"in-process": [], "server": []}
    try:
        for r in range(args.repeats):
            order = ("in-process", "server") if r % 2 == 0 else ("server", "in-process")
            for path in order:
                with tempfile.TemporaryDirectory() as tmp:
                    res = run_path(path, None if path == "in-process" else url, Path(tmp),
                                   args.override)  # fmt: skip
                results[path].append(res)
                print(f"repeat {r + 1} {path}: " + ", ".join(
                    f"{s} {res[s]['seconds']:.1f}s" for s in STAGES), flush=True)  # fmt: skip
    finally:
        if server is not None:
            server.stop()

    print(f"\nsimulate + generate, {' '.join(['debug=tiny', *args.override])}, "
          f"median of {args.repeats}")  # fmt: skip
    print(f"{'stage':9} {'path':11} {'wall s':>8} {'calls':>6} {'prompt tok':>10} "
          f"{'compl tok':>9} {'compl tok/s':>11} {'all tok/s':>9}")  # fmt: skip
    rows = {}
    for stage in STAGES:
        for path in ("in-process", "server"):
            runs = [x[stage] for x in results[path]]
            sec = statistics.median(x["seconds"] for x in runs)
            comp = statistics.median(x["completion_tokens"] for x in runs)
            prompt = statistics.median(x["prompt_tokens"] for x in runs)
            calls = statistics.median(x["calls"] for x in runs)
            rows[stage, path] = (sec, comp / sec, (comp + prompt) / sec)
            print(f"{stage:9} {path:11} {sec:8.1f} {calls:6.0f} {prompt:10.0f} {comp:9.0f} "
                  f"{comp / sec:11.1f} {(comp + prompt) / sec:9.1f}")  # fmt: skip
    print("\nserver vs in-process (>1: the server is faster)")
    for stage in STAGES:
        (s_in, c_in, a_in), (s_sv, c_sv, a_sv) = rows[stage, "in-process"], rows[stage, "server"]
        print(f"  {stage:9} wall time x{s_in / s_sv:.2f}   completion tok/s x{c_sv / c_in:.2f}"
              f"   all tok/s x{a_sv / a_in:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
