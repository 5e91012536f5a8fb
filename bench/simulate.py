"""LLM load of the simulation at the paper's scale, and what a global round barrier costs.

Part 1 runs the real simulate stage (the shipped 1,000 profiles, real embeddings, constrained
K-means, prompts from conf/) for a few rounds with a FAST DETERMINISTIC DOUBLE as every LLM
role: it answers from canned texts (routing answers that parse) and counts tokens with the
real SmolLM2 tokenizer. It prints calls, tokens and batch sizes per round: how the simulator
batches and how much it sends, not model speed.

Part 2 replays the recorded requests of those rounds on a LATENCY MODEL of one inference
server, under two schedules of the same work:

- lock-step (what the engine does today): each round is a chain of global phases (all
  agents act, all modulators route, all modulators share, summaries, memories, plans, goal
  checks); a phase starts when every request of the phase before it has returned.
- independent (`simulation.schedule=groups`, matrix/sim/scheduler.py): each group's steps
  (a phase of one round) are submitted as soon as the steps they depend on have returned,
  with every group's requests in flight at once up to the server's concurrency. The
  dependencies are those the scheduler runs on: `matrix.sim.phases.dependencies` of this
  config's prompts and cadences (what each phase reads and writes), and the one
  cross-group dependency (a modulator routes round r's news only after every group has
  decided, in round r-1, whom to tell). So sharing runs beside routing, plans and goal
  checks beside routing and the summary, the next round's actions beside the summary.

The server model (continuous batching, vLLM-like): at most `--concurrency` requests run; a
request first prefills its prompt (`--prefill-s-per-token` x prompt tokens), then decodes one
token per engine step, and a step takes `--step-base-s` + `--step-per-seq-s` x running
requests, so a lone request decodes faster than one in a full batch; waiting requests start
by (round, phase), the order the OpenAI backend gives its slots to the `groups` schedule's
requests (matrix.llm.slots), or first come first served with `--queue fcfs`. Output lengths are
drawn per request (seeded lognormal around a per-role median, capped at the paper preset's
max_new_tokens), the same draws for both schedules. Defaults approximate Llama-3-8B on one
H100: 10 ms/step alone, 25 ms/step at 256 sequences (~10K output tokens/s).

    python bench/simulate.py [--rounds 3] [--agents 1000] [--concurrency 256] [--seed 0]
    python bench/simulate.py --rounds 4 --trace trace.json   # keep the requests; a second
                                                            # run replays them without the stage
    python bench/simulate.py --agents 100000 --rounds 2 --tokens chars --no-latency-model

Population scale: above the shipped 1,000 profiles the bench synthesizes the population by
cycling them (bench/population_scale.py; copies reuse the shipped profiles' embeddings with
seeded noise, said in the output), and it prints setup seconds, seconds per round (the
double's share and the engine's apart) and peak RSS. `--tokens chars` counts a prompt's
tokens as characters / 4 instead of rendering and tokenizing it (the tokenizer costs ~ms a
request, more than the simulator's own work per agent).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import re
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from matrix.sim.phases import (  # noqa: E402
    CROSS_GROUP,
    PHASES,
    Deps,
    dependencies,
    phase_specs,
    step_priority,
)

_ITEM = re.compile(r"^([A-Z]{1,2})\. ", re.MULTILINE)
_FIRST_MEMBER = re.compile(r"^0: (.+?) - ", re.MULTILINE)


def prompt_kind(chat) -> str:
    """Which engine call a chat is, from the shipped (paper) prompt set's wording."""
    system = chat[0]["content"] if chat[0]["role"] == "system" else ""
    user = next(m["content"] for m in chat if m["role"] == "user")
    if "Which other communities would care" in user:
        return "share"
    if "modulator of a community" in system:
        return "route"
    if "scenarios of a social simulation" in system:
        return "scenario"
    if "In one sentence, what do these people have in common" in user:
        return "group_description"
    if user.startswith("You are ") and ("What do you do" in user or "How do you respond" in user):
        return "act"
    if user.startswith("Earlier summary:"):
        return "memory"
    if "Rewrite the plan" in user:
        return "plan"
    if "Answer yes or no" in user:
        return "goal_check"
    return "setup"


@dataclass
class Record:
    kind: str
    user: str
    prompt_tokens: int
    items: int  # routing items (labelled lines) for a route call


class CountingDouble:
    """Deterministic stand-in LLM: canned answers that parse, real token counts, a record of
    every request for the latency model."""

    name = "deterministic-double"

    def __init__(self, tokens: str = "tokenizer"):
        from transformers import AutoTokenizer

        from matrix.llm.embedded import smollm2_hf_dir

        self.tok = AutoTokenizer.from_pretrained(smollm2_hf_dir()) if tokens != "chars" else None
        self.records: list[Record] = []
        self.seconds = 0.0  # time spent in generate: the double's, not the simulator's

    def count(self, text: str) -> int:
        if self.tok is None:
            return max(1, len(text) // 4)
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def generate(self, chats, sampling):
        from matrix.llm.chat import render
        from matrix.llm.protocol import Completion

        t0 = time.perf_counter()
        out = []
        for chat in chats:
            if self.tok is None:
                prompt = "".join(m["content"] for m in chat)
            else:
                prompt = render(self.tok, chat, add_generation_prompt=True)
            kind = prompt_kind(chat)
            user = next(m["content"] for m in chat if m["role"] == "user")
            items = _ITEM.findall(user) if kind == "route" else []
            if kind == "route":
                reply = "\n".join(f"{x}: [0, 1], they share this interest." for x in items)
            elif kind == "share":
                reply = "[0, 1], they discuss the same topic."
            elif kind == "goal_check":
                reply = "No."
            elif kind == "group_description":  # distinct, so a group's calls can be told apart
                m = _FIRST_MEMBER.search(user)
                reply = f"People who know {m.group(1) if m else 'each other'}."
            else:
                reply = "I post an update about my project and ask my friends for advice on the next step."
            n_prompt = self.count(prompt)
            n_out = min(sampling.max_new_tokens, self.count(reply) + 1)
            self.records.append(Record(kind, user, n_prompt, len(items)))
            out.append(Completion(reply, n_prompt, n_out, "stop", self.name))
        self.seconds += time.perf_counter() - t0
        return out


# -- the work: requests per round, group and phase ---------------------------------------------
# A recorded request's kind -> the scheduler's phase (matrix/sim/phases.py) that sends it.
PHASE_OF_KIND = {"scenario": "summary"}
# Median output tokens per request of each phase (a route answer: a line per item), and the
# cap: max_new_tokens of conf/llm/vllm_llama3_8b_instruct.yaml (the paper presets' roles).
MEDIAN_OUT = {"act": 60, "share": 16, "summary": 150, "memory": 60, "plan": 70, "goal_check": 2}
ROUTE_TOKENS_PER_ITEM = 12
CAP_OUT = {"act": 256, "route": 256, "share": 256, "summary": 512, "memory": 512, "plan": 256}
CAP_OUT["goal_check"] = 4


@dataclass
class Request:
    round: int
    group: int
    phase: str
    prompt_tokens: int
    output_tokens: int


def attribute(
    records: list[Record], agents: list[dict], groups: list[dict], seed: int
) -> list[Request]:
    """Each recorded request of the rounds -> (round, group, phase), with its output length."""
    name_to_group = {a["profile"]["name"]: a["group"] for a in agents}
    lengths = sorted({len(n) for n in name_to_group}, reverse=True)  # longest name first
    desc_to_group = {g["description"]: g["id"] for g in groups}
    rng = random.Random(seed)
    out, r, prev = [], 0, "setup"
    for rec in records:
        if rec.kind in ("setup", "group_description"):
            continue
        if rec.kind == "act" and prev != "act":
            r += 1
        prev = rec.kind
        if rec.kind in ("route", "share", "scenario"):
            first = rec.user.split("\n", 1)[0].split(": ", 1)[1]
            gid = desc_to_group[first]
        else:  # the agent's name where the prompt states whose it is
            at = {"act": len("You are "), "memory": rec.user.find("Memories of ") + 12}
            i = at.get(rec.kind, 0)
            gid = next(
                name_to_group[rec.user[i : i + n]]
                for n in lengths
                if rec.user[i : i + n] in name_to_group
            )
        phase = PHASE_OF_KIND.get(rec.kind, rec.kind)
        median = ROUTE_TOKENS_PER_ITEM * rec.items if phase == "route" else MEDIAN_OUT[phase]
        n_out = max(1, min(CAP_OUT[phase], round(median * math.exp(rng.gauss(0, 0.5)))))
        out.append(Request(r, gid, phase, rec.prompt_tokens, n_out))
    return out


# -- the server model --------------------------------------------------------------------------
@dataclass
class Server:
    concurrency: int
    step_base_s: float
    step_per_seq_s: float
    prefill_s_per_token: float


@dataclass(order=True)
class _Queued:
    priority: tuple
    req: Request = field(compare=False)
    node: object = field(compare=False)


@dataclass
class Node:
    """A set of requests submitted together once the nodes in `deps` are done and those in
    `after_start` have been submitted (they took their inputs before this one changes them)."""

    key: tuple
    requests: list[Request]
    deps: list[tuple]
    priority: tuple
    after_start: list[tuple] = field(default_factory=list)
    waiting: int = 0
    left: int = 0
    children: list = field(default_factory=list)
    start_children: list = field(default_factory=list)
    done_at: float = -1.0


def replay(nodes: dict[tuple, Node], server: Server, fcfs: bool = False) -> dict:
    """Event-driven replay: returns wall time and the time-average share of busy slots.
    Waiting requests start by their node's priority, or in arrival order with `fcfs`."""
    for n in nodes.values():
        n.waiting, n.left = len(n.deps) + len(n.after_start), len(n.requests)
        for d in n.deps:
            nodes[d].children.append(n)
        for d in n.after_start:
            nodes[d].start_children.append(n)
    queue: list[_Queued] = []
    seq = 0
    running: list[list] = []  # [prefill_left_s, decode_left_tokens, request, node]
    now = busy_area = 0.0
    done_nodes = 0

    def release(children: list) -> None:
        for c in children:
            c.waiting -= 1
            if c.waiting == 0:
                start(c)

    def finish(node: Node) -> None:
        nonlocal done_nodes
        node.done_at = now
        done_nodes += 1
        release(node.children)

    def start(node: Node) -> None:
        nonlocal seq
        release(node.start_children)
        if not node.requests:
            finish(node)
            return
        for req in node.requests:
            seq += 1
            heapq.heappush(queue, _Queued((seq,) if fcfs else (*node.priority, seq), req, node))

    for n in nodes.values():
        if n.waiting == 0:
            start(n)
    while queue or running:
        while queue and len(running) < server.concurrency:
            q = heapq.heappop(queue)
            running.append(
                [
                    q.req.prompt_tokens * server.prefill_s_per_token,
                    q.req.output_tokens,
                    q.req,
                    q.node,
                ]
            )
        n_run = len(running)
        step = server.step_base_s + server.step_per_seq_s * n_run
        # time until the next request changes phase or finishes
        dt = min(r[0] if r[0] > 0 else r[1] * step for r in running)
        for r in running:
            if r[0] > 0:
                r[0] -= dt
            else:
                r[1] -= dt / step
        busy_area += n_run * dt
        now += dt
        still = []
        for r in running:
            if r[0] <= 1e-12 and r[1] <= 1e-9:
                r[3].left -= 1
                if r[3].left == 0:
                    finish(r[3])
            else:
                if r[0] < 1e-12:
                    r[0] = 0.0
                still.append(r)
        running = still
    assert done_nodes == len(nodes), "a dependency cycle left work undone"
    return {"wall_s": now, "busy": busy_area / (server.concurrency * now) if now else 0.0}


def by_critical_path(nodes: dict[tuple, Node], server: Server) -> None:
    """Sets each node's priority to its downstream height: its longest request at the full
    batch's step, plus the highest of what waits on it (the highest first). The lengths are
    the answers' true ones, so this is an oracle, not an order a client can compute."""
    full_step = server.step_base_s + server.step_per_seq_s * server.concurrency
    waiting_on = defaultdict(list)
    for key, n in nodes.items():
        for d in (*n.deps, *n.after_start):
            waiting_on[d].append(key)
    height: dict[tuple, float] = {}
    # a step waits only on steps earlier in lock-step order: the reverse of that order sees
    # every waiter before what it waits on
    for key in sorted(nodes, key=lambda k: step_priority(k[1:]), reverse=True):
        own = max(
            (
                q.prompt_tokens * server.prefill_s_per_token + q.output_tokens * full_step
                for q in nodes[key].requests
            ),
            default=0.0,
        )
        height[key] = own + max((height[c] for c in waiting_on[key]), default=0.0)
    for key, n in nodes.items():
        n.priority = (-height[key],)


def lockstep_nodes(reqs: list[Request]) -> dict[tuple, Node]:
    """One node per (round, phase) with every group's requests; each waits for the last."""
    by = defaultdict(list)
    for q in reqs:
        by[(q.round, q.phase)].append(q)
    nodes, prev = {}, None
    for r in sorted({q.round for q in reqs}):
        for ph in PHASES:
            key = (r, ph)
            nodes[key] = Node(
                key, by.get(key, []), [prev] if prev else [], (step_priority((r, ph)),)
            )
            prev = key
    return nodes


def independent_nodes(
    reqs: list[Request], group_ids: list[int], deps: dict[tuple, Deps]
) -> dict[tuple, Node]:
    """One node per (group, round, phase), waiting for what the groups scheduler waits for:
    `deps` is matrix/sim/phases.py's `dependencies` for this config, the declaration the
    scheduler runs on, and a route of round r also waits for every group's share of round
    r-1 (`CROSS_GROUP`, the news it routes)."""
    by = defaultdict(list)
    for q in reqs:
        by[(q.group, q.round, q.phase)].append(q)
    missing = {(q.round, q.phase) for q in reqs} - set(deps)
    assert not missing, f"requests of steps the scheduler does not run: {sorted(missing)}"
    nodes = {}
    for g in group_ids:
        for (r, ph), d in deps.items():
            cross = CROSS_GROUP.get(ph)
            after = [(g, *s) for s in d.done]
            if cross and (r - 1, cross) in deps:
                after += [(h, r - 1, cross) for h in group_ids]
            nodes[(g, r, ph)] = Node(
                (g, r, ph),
                by.get((g, r, ph), []),
                after,
                (step_priority((r, ph)),),
                after_start=[(g, *s) for s in d.started],
            )
    return nodes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=256, help="server slots (vLLM max_num_seqs)")
    ap.add_argument("--step-base-s", type=float, default=0.010)
    ap.add_argument("--step-per-seq-s", type=float, default=0.00006)
    ap.add_argument("--prefill-s-per-token", type=float, default=0.00005)
    ap.add_argument("--seed", type=int, default=0, help="seed of the output-length draws")
    ap.add_argument(
        "--tokens",
        choices=("tokenizer", "chars"),
        default="tokenizer",
        help="the double's token counts: the SmolLM2 tokenizer, or characters / 4 (fast)",
    )
    ap.add_argument(
        "--no-latency-model", action="store_true", help="skip part 2 (the schedule replay)"
    )
    ap.add_argument("--trace", type=Path, help="requests file: written after the run, or replayed")
    ap.add_argument(
        "--queue",
        choices=("priority", "fcfs", "oracle"),
        default="priority",
        help="the queue: by (round, phase), as the OpenAI backend's slots order the groups "
        "schedule's requests (matrix.llm.slots); first come first served; or `oracle`: the "
        "independent schedule by critical path from every answer's true length, which no "
        "client knows in advance (a bound on what any request order can gain)",
    )
    args = ap.parse_args()
    if args.trace and args.trace.exists():
        saved = json.loads(args.trace.read_text())
        reqs = [
            Request(**{**q, "phase": PHASE_OF_KIND.get(q["phase"], q["phase"])})
            for q in saved["requests"]
        ]
        print(f"replaying {args.trace} ({saved['rounds']} rounds, {len(reqs)} requests)")
        # the phases' dependencies come from the config (its prompts and cadences), as in
        # the stage: a trace replays against the conf/ it is read with
        compare_schedules(reqs, saved["groups"], bench_config(args, "unused"), args)
        return

    from bench.population_scale import Timer, copy_encoder, synthesize
    from matrix.llm.roles import Roles
    from matrix.sim.run import run_simulate

    with tempfile.TemporaryDirectory() as tmp:
        profiles = None
        if args.agents > 1000:  # more than the shipped profiles: cycle them (see the module)
            profiles, base_n = synthesize(args.agents, Path(tmp) / "profiles.jsonl")
            import matrix.sim.run as run_mod

            run_mod.Encoder = copy_encoder(base_n)
            print(
                f"population: {args.agents} profiles cycling the shipped {base_n}; embeddings: "
                f"the {base_n} shipped profiles encoded, copies reuse them with seeded noise"
            )
        cfg = bench_config(args, tmp, profiles)
        # No call cache: every request reaches the double, so tokens are per round.
        double = CountingDouble(args.tokens)
        roles = Roles(cfg.llm, backends={"smollm2": double}, cache=False)
        timer = Timer(double)
        timer.install()
        t0 = timer.t0 = time.perf_counter()
        counts = run_simulate(cfg, roles=roles)
        wall = time.perf_counter() - t0
        out = Path(tmp) / "bench/simulate"
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        agents = [json.loads(x) for x in (out / "agents.jsonl").read_text().splitlines()]
        groups = json.loads((out / "groups.json").read_text())["groups"]
    how = "SmolLM2 tokenizer" if args.tokens == "tokenizer" else "characters / 4"
    print(f"simulate bench (LLM = deterministic double; token counts from the {how})")
    print(
        f"agents={counts['agents']} groups={counts['groups']} rounds={counts['rounds']} "
        f"events={counts['events']} scenarios={counts['scenarios']} wall={wall:.1f}s (incl. setup)"
    )
    print(
        f"{'round':>5} {'requests':>9} {'calls':>7} {'prompt_tok':>11} {'compl_tok':>10} {'max_batch':>10} {'observations':>13}"
    )
    for r in rows:
        if "sim/round" not in r:
            continue
        print(
            f"{r['sim/round']:>5} {r['sim/llm_requests']:>9} {r['sim/llm_calls']:>7} {r['sim/prompt_tokens']:>11} "
            f"{r['sim/completion_tokens']:>10} {r['sim/max_batch']:>10} {r['sim/observations']:>13}"
        )

    print(timer.report(counts["agents"]))
    if args.no_latency_model:
        return
    reqs = attribute(double.records, agents, groups, args.seed)
    if args.trace:
        args.trace.write_text(
            json.dumps(
                {
                    "rounds": args.rounds,
                    "groups": [g["id"] for g in groups],
                    "requests": [asdict(q) for q in reqs],
                }
            )
        )
    compare_schedules(reqs, [g["id"] for g in groups], cfg, args)


def bench_config(args, runs_dir: str, profiles: Path | None = None):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "simulate",
            overrides=[
                f"paths.runs_dir={runs_dir}",
                "logger=none",
                f"population.size={args.agents}",
                *([f"population.path={profiles}"] if profiles else []),
                "population.min_age=null",  # the paper's 1,000 profiles, all of them
                f"simulation.max_rounds={args.rounds}",
                "run.name=bench",
            ],
        )


def compare_schedules(reqs: list[Request], group_ids: list[int], cfg, args) -> None:
    server = Server(
        args.concurrency, args.step_base_s, args.step_per_seq_s, args.prefill_s_per_token
    )
    per_phase = defaultdict(int)
    for q in reqs:
        per_phase[q.phase] += 1
    print()
    print(
        f"latency model: {len(reqs)} requests over {max(q.round for q in reqs)} rounds "
        f"({', '.join(f'{p} {per_phase[p]}' for p in PHASES)}), "
        f"{sum(q.output_tokens for q in reqs)} output tokens (seed {args.seed}); server: "
        f"{args.concurrency} slots, step {args.step_base_s * 1e3:.0f} ms + "
        f"{args.step_per_seq_s * 1e3:.2f} ms/sequence, prefill {args.prefill_s_per_token * 1e6:.0f} us/token, "
        f"queue {args.queue}"
    )
    fcfs = args.queue == "fcfs"
    lock = replay(lockstep_nodes(reqs), server, fcfs)
    sim = cfg.simulation
    deps = dependencies(
        phase_specs(cfg.agent.prompts),
        sorted({q.round for q in reqs}),
        sim.revise_plan_every,
        sim.goal_check_every,
    )
    free_nodes = independent_nodes(reqs, group_ids, deps)
    if args.queue == "oracle":
        by_critical_path(free_nodes, server)
    free = replay(free_nodes, server, fcfs)
    print(f"{'schedule':<12} {'wall_s':>8} {'server_busy':>12}")
    print(f"{'lock-step':<12} {lock['wall_s']:>8.1f} {lock['busy']:>12.1%}")
    print(f"{'independent':<12} {free['wall_s']:>8.1f} {free['busy']:>12.1%}")
    print(f"lock-step / independent wall time: {lock['wall_s'] / free['wall_s']:.2f}x")
    # No schedule beats the server's peak throughput: a slot prefills or decodes, and decode
    # throughput n / step(n) is highest with every slot running (a lower bound on wall time).
    full_step = server.step_base_s + server.step_per_seq_s * server.concurrency
    floor = (
        sum(q.prompt_tokens for q in reqs) * server.prefill_s_per_token
        + sum(q.output_tokens for q in reqs) * full_step
    ) / server.concurrency
    print(
        f"any schedule: at least {floor:.1f} s (every slot busy throughout), "
        f"so at most {lock['wall_s'] / floor:.2f}x"
    )


if __name__ == "__main__":
    main()
