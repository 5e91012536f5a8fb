"""Routing answers a model cannot cut short: the JSON schema a group's modulator is asked
under, the token budget sized from the group, the path chosen by what the backend can do,
and the per-round counts (asked, made, parsed, fallbacks by why) in report.md.

The modulator is a scripted double (answers replayed from a list, with their finish reason,
and the requests it was sent kept), so what is checked is what the simulator sends and how it
reads and counts the answers."""

from __future__ import annotations

import json
import math
import re

import pytest

from matrix.common.io import read_jsonl
from matrix.common.validation import ConfigProblems
from matrix.llm.embedded import smollm2_hf_dir
from matrix.llm.hf import HFBackend
from matrix.llm.openai_backend import OpenAIBackend
from matrix.llm.protocol import Completion, Sampling, constrains_output
from matrix.llm.roles import Roles
from matrix.llm.vllm_backend import VLLMBackend
from matrix.sim.communication import RoutingCounts
from matrix.sim.modulator import StructuredCommunication
from matrix.sim.routing_schema import RoutingAnswers, parse_json_routes, routing_schema
from matrix.sim.run import run_simulate
from tests.conftest import compose
from tests.sim.test_communication import PROMPTS, _context
from tests.sim.test_routing_on_server import routing_rows

ALL = "A: [1], ok\nB: [0, 2], ok\nC: [0], ok"  # group 0's three actions, all decided


class ReplayModulator:
    """Answers each chat with the next (text, finish_reason); keeps chats and samplings."""

    name = "replay"

    def __init__(self, replies, constrains_json: bool | None = None):
        self.replies = list(replies)
        self.requests: list[tuple[list, Sampling]] = []
        if constrains_json is not None:
            self.constrains_json = constrains_json

    def generate(self, chats, sampling):
        self.requests += [(c, sampling) for c in chats]
        out = []
        for _ in chats:
            text, finish = self.replies.pop(0)
            out.append(Completion(text, 1, 1, finish))
        return out


def _route(mod, **config):
    ctx = _context(mod)
    ctx.config.update(config)
    comm = StructuredCommunication(ctx)
    agents = ctx.agents
    return comm.route(1, {i: f"act {i}" for i in range(6)}, agents, ctx.groups)


# -- the schema and the budget -------------------------------------------------------------
def test_the_schema_requires_every_item_with_the_groups_member_numbers():
    s = routing_schema(["A", "B", "C"], 4, 80)
    assert s["required"] == ["A", "B", "C"] and s["additionalProperties"] is False
    for label in "ABC":
        item = s["properties"][label]
        assert item["required"] == ["members", "reason"] and item["additionalProperties"] is False
        members = item["properties"]["members"]
        assert members["items"]["enum"] == [0, 1, 2, 3] and members["maxItems"] == 4
        assert item["properties"]["reason"]["maxLength"] == 80
    # an answer in that shape is read; the item's own actor and unknown numbers are dropped
    answer = json.dumps(
        {"A": {"members": [0, 1, 3], "reason": "friends"}, "B": {"members": [], "reason": "no"}}
    )
    routes, answered = parse_json_routes(answer, ["A", "B", "C"], 4, {"A": 1, "B": None})
    assert answered == {"A", "B"}
    assert routes["A"].ids == (0, 3) and routes["A"].reason == "friends"
    assert routes["B"].ids == () and "C" not in routes
    assert parse_json_routes('{"A": {"members": [1', ["A"], 4, {}) is None  # cut off
    assert parse_json_routes('{"A": {"members": "all"}}', ["A"], 4, {}) == ({}, {"A"})


def test_the_budget_grows_with_items_and_members():
    b = RoutingAnswers(item_tokens=40, recipient_tokens=3, margin=1.5, reason_chars=100)
    assert b.tokens(4, 5) == math.ceil(1.5 * (4 + 4 * (40 + 3 * 5)))
    assert b.tokens(1, 2) < b.tokens(2, 2) < b.tokens(2, 3)
    # more items than the old fixed cap of 64 tokens could hold a line for
    assert b.tokens(8, 10) > 8 * 64


def test_the_budget_holds_the_longest_answer_the_schema_allows():
    """Without the margin, the estimate covers a 10-member group's 10 items each naming every
    member with a reason of reason_chars characters of prose, in the embedded model's tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_hf_dir())
    b = RoutingAnswers()
    reason = ("they share this interest and talk about it often " * 4)[: b.reason_chars]
    labels = [chr(65 + k) for k in range(10)]
    longest = json.dumps({x: {"members": list(range(10)), "reason": reason} for x in labels})
    used = len(tok(longest, add_special_tokens=False)["input_ids"])
    assert used <= b.tokens(10, 10) / b.margin, (used, b.tokens(10, 10))


def _json_answer(labels="ABC") -> str:
    return json.dumps({x: {"members": [0, 1, 2], "reason": "all of them"} for x in labels})


@pytest.mark.parametrize(
    "constrains, token_budget, sized",
    [
        (True, "auto", True),  # under a schema: the group's budget
        (False, "auto", False),  # lines keep the role's max_new_tokens, as before
        (False, "group", True),
        (True, "role", False),
    ],
)
def test_each_answer_gets_its_groups_budget_where_token_budget_says(
    constrains, token_budget, sized
):
    reply = _json_answer() if constrains else ALL
    mod = ReplayModulator([(reply, "stop")] * 2, constrains_json=constrains)
    _route(mod, token_budget=token_budget)
    want = (
        RoutingAnswers().tokens(3, 3) if sized else Sampling().max_new_tokens
    )  # 3 actions, 3 members
    assert [s.max_new_tokens for _, s in mod.requests] == [want, want]


# -- which path ----------------------------------------------------------------------------
def test_only_backends_that_constrain_decoding_are_asked_with_a_schema():
    assert constrains_output(OpenAIBackend) and constrains_output(VLLMBackend)
    assert not constrains_output(HFBackend)  # it would ignore the schema: lines stay

    lines = ReplayModulator([(ALL, "stop"), (ALL, "stop")])
    routing = _route(lines)
    assert all(s.json_schema is None for _, s in lines.requests)
    assert routing.counts.structured == 0 and routing.counts.parsed == 6

    constrained = ReplayModulator([(_json_answer(), "stop")] * 2, constrains_json=True)
    routing = _route(constrained, prompts={**PROMPTS, "json_hint": "JSON please."})
    for chat, s in constrained.requests:
        assert s.json_schema == routing_schema(["A", "B", "C"], 3, RoutingAnswers().reason_chars)
        assert chat[-1]["content"].endswith("JSON please.")
    assert routing.decisions[0].observers == (1, 2) and routing.decisions[0].how == "modulator"
    assert routing.decisions[4].observers == (3, 5)  # group 1's members 0 and 2, not 4 itself
    c = routing.counts
    assert (c.asked, c.made, c.parsed, c.structured, c.fallbacks) == (6, 6, 6, 6, 0)

    off = ReplayModulator([(ALL, "stop"), (ALL, "stop")], constrains_json=True)
    assert _route(off, structured_output="off").counts.structured == 0
    assert all(s.json_schema is None for _, s in off.requests)


def test_bad_routing_options_are_named():
    p = ConfigProblems()
    config = {"unparsed": "broadcast", "inbound_max": 1, "memory_size": 1, "goal_chars": 1}
    bad = {"structured_output": "maybe", "token_budget": "huge", "token_margin": 0.5}
    StructuredCommunication.check_config({**config, **bad}, p)
    text = str(p.items)
    for key in bad:
        assert f"communication.{key}" in text


# -- the counts ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "group1, counts",
    [
        # cut off twice: B decided by the retry, C truncated
        (
            [("A: [1], ok\nB: [", "length"), ("B: [2], ok\nC: [", "length")],
            RoutingCounts(asked=6, made=6, parsed=5, retried=1, truncated=1),
        ),
        # the retry decides B and leaves C out
        (
            [("A: [1], ok", "stop"), ("B: [0], ok", "stop")],
            RoutingCounts(asked=6, made=5, parsed=5, retried=1, missing=1),
        ),
        # cut off, then nothing readable: the truncation is why
        (
            [("A: [1], ok\nB: [", "length"), ("no idea", "stop")],
            RoutingCounts(asked=6, made=5, parsed=4, truncated=2),
        ),
        # nothing readable, twice
        (
            [("no idea", "stop"), ("still none", "stop")],
            RoutingCounts(asked=6, made=3, parsed=3, unparseable=3),
        ),
    ],
)
def test_fallbacks_are_counted_by_why(group1, counts):
    mod = ReplayModulator([(ALL, "stop"), group1[0], group1[1]])
    routing = _route(mod)
    assert routing.counts == counts
    fallbacks = [d for d in routing.decisions.values() if d.how == "fallback"]
    assert len(fallbacks) == counts.fallbacks
    assert all(d.reason == "unparseable answer" for d in fallbacks)  # rows as they always were


class CutOffWorld:
    """A whole simulation's LLM: routing answers decide every item but the last, whose line
    the token budget cuts (finish_reason "length"); every other prompt gets a plain answer."""

    name = "cut-off-world"
    item = re.compile(r"^([A-Z]{1,2})\. ", re.MULTILINE)

    def generate(self, chats, sampling):
        out = []
        for chat in chats:
            labels = self.item.findall(chat[1]["content"]) if len(chat) > 1 else []
            if "notice" in chat[1]["content"] and labels:
                if chat[-1]["content"] != chat[1]["content"]:  # the retry: only the last is left
                    labels = labels[-1:]
                lines = [f"{x}: [0, 1], they care" for x in labels[:-1]] + [f"{labels[-1]}: ["]
                out.append(Completion("\n".join(lines), 10, 5, "length"))
            else:
                out.append(Completion("Someone posts an update.", 10, 5, "stop"))
        return out


@pytest.mark.parametrize("schedule", ["lockstep", "groups"])
def test_the_report_counts_each_rounds_routing_with_truncations(tmp_path, schedule):
    cfg = compose(
        "simulate",
        [
            "debug=tiny",
            f"paths.runs_dir={tmp_path}",
            "logger=none",
            "run.name=cut",
            f"simulation.schedule={schedule}",
        ],
    )
    run_simulate(cfg, roles=Roles(cfg.llm, backends={"smollm2": CutOffWorld()}, cache=False))
    out = tmp_path / "cut" / "simulate"
    rows = routing_rows(out / "report.md")
    events = read_jsonl(out / "events.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        # debug=tiny: 2 groups route every round; in each, one item is cut off twice
        assert r["truncated"] == r["fallbacks"] == 2, r
        assert r["asked"] == r["made"] == r["parsed"] + 2 and r["retried"] == 0, r
        assert r["unparseable"] == r["missing"] == r["structured"] == 0, r
        in_round = [e for e in events if e["round"] == r["round"]]
        assert r["asked"] >= len(in_round)  # every action, and the news from the other group
        assert sum(e["routing"] == "fallback" for e in in_round) <= 2
