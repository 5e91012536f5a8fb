"""Overhead of the LLM layer (cache + ledger + budget + retries) over calling each backend
directly, on the same prompts in the same run, and the speedup of a cache-warm rerun.

    python bench/llm.py                       # hf (embedded SmolLM2 on transformers)
    python bench/llm.py --server              # + openai backend on a local vLLM server
    python bench/llm.py --base-url http://127.0.0.1:8000/v1 --model smollm2

Prints tokens/s for each path and the ratios; the layer's target is < 5% overhead. On a
shared or noisy machine the end-to-end ratio swings with load, so the layer's own time (its
wall time minus the time spent inside the backend's generate) is printed as well: that is the
overhead the layer adds, measured on the very same calls.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable

import openai
from omegaconf import OmegaConf

from matrix.llm.cache import CallCache
from matrix.llm.hf import HFBackend
from matrix.llm.openai_backend import OpenAIBackend
from matrix.llm.protocol import LLM, Chat, Sampling, StreamingLLM
from matrix.llm.roles import Roles

TOPICS = ["rivers", "bread", "chess", "volcanoes", "bees", "trains", "jazz", "glaciers",
          "tea", "bridges", "owls", "deserts", "kites", "coral", "maps", "clocks"]  # fmt: skip


def prompts(n: int, tag: str) -> list[Chat]:
    # `tag` makes every measured pass a cache miss for the layer (the direct path has none).
    return [
        [{"role": "user", "content": f"({tag}) Write two sentences about {TOPICS[i % 16]}."}]
        for i in range(n)
    ]


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - t0, tokens


class TimedBackend:
    """Passes calls through to a backend and adds up the time spent inside it."""

    def __init__(self, inner: LLM):
        self.inner = inner
        self.seconds = 0.0

    @property
    def name(self) -> str:
        return self.inner.name

    def generate(self, chats, sampling, **kw):
        t0 = time.perf_counter()
        try:
            return self.inner.generate(chats, sampling, **kw)
        finally:
            self.seconds += time.perf_counter() - t0


class TimedStreamingBackend(TimedBackend):
    """A TimedBackend around a backend that reports rows as they arrive."""

    def generate_streaming(self, chats, sampling, on_result):
        t0 = time.perf_counter()
        try:
            return self.inner.generate_streaming(chats, sampling, on_result)
        finally:
            self.seconds += time.perf_counter() - t0


def timed_backend(inner: LLM) -> TimedBackend:
    return TimedStreamingBackend(inner) if isinstance(inner, StreamingLLM) else TimedBackend(inner)


def layer_roles(backend: LLM, cache_dir: str) -> Roles:
    cfg = OmegaConf.create(
        {"backends": {}, "roles": {"bench": {"backend": "b"}}, "budget": {"max_tokens": 10**12}}
    )
    return Roles(cfg, backends={"b": backend}, cache=CallCache.in_dir(cache_dir))


def bench(
    name: str,
    backend: LLM,
    direct: Callable[[list[Chat], Sampling], int],
    n: int,
    new_tokens: int,
    repeats: int,
) -> None:
    sampling = Sampling(max_new_tokens=new_tokens)
    direct(prompts(2, "warmup"), sampling)  # load weights / open connections first
    with tempfile.TemporaryDirectory() as tmp:
        inner = timed_backend(backend)
        role = layer_roles(inner, tmp).get("bench")
        d_times, l_times, own, d_tok, l_tok = [], [], [], 0, 0
        for r in range(repeats):
            # Interleaved, and the order swapped every repeat, so drift and warm-up effects
            # hit both paths alike.
            def run_direct(r: int = r) -> None:
                nonlocal d_tok
                dt, d_tok = timed(lambda: direct(prompts(n, f"d{r}"), sampling))
                d_times.append(dt)

            def run_layer(r: int = r) -> None:
                nonlocal l_tok
                before = inner.seconds
                lt, l_tok = timed(
                    lambda: sum(
                        c.completion_tokens
                        for c in role.generate(prompts(n, f"l{r}"), max_new_tokens=new_tokens)
                    )
                )
                l_times.append(lt)
                own.append((lt - (inner.seconds - before)) / (inner.seconds - before))

            for step in (run_direct, run_layer) if r % 2 == 0 else (run_layer, run_direct):
                step()
        warm = [timed(lambda r=r: len(role.generate(prompts(n, f"l{r}"), max_new_tokens=new_tokens)))[0]
                for r in range(repeats)]  # fmt: skip
    d, lay, w = statistics.median(d_times), statistics.median(l_times), statistics.median(warm)
    print(f"[{name}] {n} prompts x {new_tokens} new tokens, median of {repeats}")
    print(f"  direct backend : {d:8.3f}s  {d_tok / d:8.1f} completion tok/s")
    print(f"  matrix layer   : {lay:8.3f}s  {l_tok / lay:8.1f} completion tok/s")
    print(f"  layer/direct time ratio : {lay / d:.3f}  (end to end {100 * (lay / d - 1):+.1f}%)")
    print(f"  layer's own time        : {100 * statistics.median(own):.3f}% of backend time")
    print(f"  cache-warm rerun        : {w * 1000:8.2f} ms  speedup x{lay / w:,.0f}")


def hf_direct(backend: HFBackend) -> Callable[[list[Chat], Sampling], int]:
    return lambda chats, s: sum(c.completion_tokens for c in backend.generate(chats, s))


def openai_direct(
    base_url: str, model: str, concurrency: int
) -> Callable[[list[Chat], Sampling], int]:
    """The plain SDK with the same concurrency: what a hand-written client would do."""

    async def run(chats: list[Chat], s: Sampling) -> int:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)
        sem = asyncio.Semaphore(concurrency)

        async def one(chat: Chat) -> int:
            async with sem:
                r = await client.chat.completions.create(
                    model=model, messages=chat, max_tokens=s.max_new_tokens, temperature=0.0
                )
                return r.usage.completion_tokens

        try:
            return sum(await asyncio.gather(*(one(c) for c in chats)))
        finally:
            await client.close()

    return lambda chats, s: asyncio.run(run(chats, s))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--server", action="store_true", help="start a local vLLM server")
    ap.add_argument("--base-url", default=None, help="an already running server")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()

    if not args.skip_hf:
        hf = HFBackend("embedded:smollm2-135m-instruct", batch_size=args.n)
        bench("hf", hf, hf_direct(hf), args.n, args.new_tokens, args.repeats)

    server = None
    base_url = args.base_url
    if args.server and base_url is None:
        from matrix.llm.server import LocalServer
        from tests.llm.conftest import free_port

        server = LocalServer(free_port()).start()
        print(f"vLLM server ready in {server.wait_ready():.0f}s")
        base_url = server.base_url
    try:
        if base_url:
            b = OpenAIBackend(args.model, base_url=base_url, api_key_env=None,
                              max_concurrency=args.concurrency)  # fmt: skip
            direct = openai_direct(base_url, args.model, args.concurrency)
            bench("openai", b, direct, args.n, args.new_tokens, args.repeats)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
