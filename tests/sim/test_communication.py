"""Each communication mode changes who observes what, as the paper specifies.

The structured mode is driven by a scripted modulator (a test double that replays fixed
answers and keeps the chats it was sent) so the routing logic itself is what is checked."""

from dataclasses import asdict

from matrix.llm.protocol import Completion, Sampling
from matrix.llm.role_llm import build_role_llm
from matrix.sim.communication import (
    CommunicationContext,
    Group,
    NoCommunication,
    RandomCommunication,
)
from matrix.sim.modulator import StructuredCommunication
from matrix.sim.modulator_inputs import ModulatorLimits
from matrix.sim.schemas import Agent, Profile

PROMPTS = {
    "intra_group": {"user": "{description}\n{memory}\n{members}\n{items}"},
    "retry_hint": "Answer with a list.",
    "inter_group": {"user": "{description}\n{memory}\n{events}\n{groups}"},
}


class ScriptedModulator:
    """Test double: answers each chat with the next scripted reply, keeps what it was asked."""

    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.batches = []
        self.chats = []

    def generate(self, chats, sampling: Sampling):
        self.batches.append(len(chats))
        self.chats += chats
        return [Completion(self.replies.pop(0), 1, 1) for _ in chats]


def _world():
    agents = [
        Agent(
            index=i,
            profile=Profile(id=str(i), name=f"P{i}", bio="", persona=f"person {i}"),
            group=0 if i < 3 else 1,
            goal=f"goal of P{i}",
        )
        for i in range(6)
    ]
    groups = [Group(0, [0, 1, 2], "group zero"), Group(1, [3, 4, 5], "group one")]
    return agents, groups


def _context(mod=None, vectors=None, seed=0, size_max=10, **limits) -> CommunicationContext:
    """What the stage hands a mode: the options (communication.*) and the modulator role."""
    agents, groups = _world()
    lim = asdict(ModulatorLimits(**limits))
    config = {
        "prompts": PROMPTS,
        "inter_group": True,
        "size_max": size_max,
        **{k: v for k, v in lim.items() if k != "candidates"},
        "inter_group_candidates": lim["candidates"],
    }
    roles = {"modulator": build_role_llm("modulator", mod, Sampling())} if mod else {}
    return CommunicationContext(config, roles, agents, groups, vectors, seed)


def _comm(mod, **limits):
    return StructuredCommunication(_context(mod, **limits))


def test_one_modulator_call_per_group_routes_all_its_actions():
    agents, groups = _world()
    # items are labelled A, B, C in member order; answers use member numbers local to the group
    mod = ScriptedModulator(
        ["A: [1], friends\nB: []\nC: [0, 2], both care", "A: [1]\nB) [0, 2]\nC - [1]"]
    )
    comm = _comm(mod)
    routing = comm.route(1, {i: f"action {i}" for i in range(6)}, agents, groups)
    d = routing.decisions
    assert mod.batches == [2]  # one call per group, both groups in one batch
    assert d[0].observers == (1,) and d[0].how == "modulator" and d[0].reason == "friends"
    assert d[1].observers == ()
    assert d[2].observers == (0,)  # local ids 0,2 -> agent 0 (2 is the actor itself)
    assert d[3].observers == (4,)
    assert d[4].observers == (3, 5)
    assert d[5].observers == (4,)
    # every member's action and every member's goal are in its group's one prompt
    first = mod.chats[0][-1]["content"]
    assert all(f"action {i}" in first and f"goal of P{i}" in first for i in range(3))


def test_retry_asks_only_groups_with_undecided_items_then_falls_back():
    agents, groups = _world()
    # group 0 leaves B undecided twice; group 1 answers in full at once
    mod = ScriptedModulator(["A: [1]\nB: maybe\nC: []", "A: [1]\nB: [0]\nC: []", "garbage again"])
    comm = _comm(mod)
    d = comm.route(1, {i: "x" for i in range(6)}, agents, groups).decisions
    assert mod.batches == [2, 1]
    assert d[0].observers == (1,) and d[0].how == "modulator"
    assert d[1].how == "fallback" and d[1].observers == (0, 2)  # broadcast
    assert comm.fallbacks == 1
    mod = ScriptedModulator(["A: [1]\nB: maybe\nC: []", "A: [1]\nB: [0]\nC: []", "garbage again"])
    d = _comm(mod, unparsed="nobody").route(1, {i: "x" for i in range(6)}, agents, groups)
    assert d.decisions[1].how == "fallback" and d.decisions[1].observers == ()


def test_the_receiving_modulator_routes_inter_group_news_to_its_own_members():
    agents, groups = _world()
    groups[1].inbound = [
        {"group": 0, "agent": 1, "name": "P1", "action": "sells a bike", "round": 1}
    ]
    # group 1 acts with agents 3 and 4 (items A, B); the news from group 0 is item C
    mod = ScriptedModulator(["A: [1]\nB: []\nC: [2], P5 wants a bike"])
    routing = _comm(mod).route(2, {3: "x", 4: "y"}, agents, groups)
    assert mod.batches == [1]  # group 0 has nothing to route this step
    assert "sells a bike" in mod.chats[0][-1]["content"]
    (news,) = routing.deliveries
    assert (news.group, news.source_group, news.agent) == (1, 0, 1)
    assert news.observers == (5,) and news.how == "modulator"
    assert news.reason == "P5 wants a bike"


def test_group_memory_reaches_the_routing_and_inter_group_prompts():
    agents, groups = _world()
    groups[0].memory = ["Last week P0 and P1 planned a hiking trip."]
    mod = ScriptedModulator(["A: [1]", "[1], they hike too"])
    comm = _comm(mod)
    comm.route(1, {0: "buys boots"}, agents, groups)
    out = comm.inter_group({0: [0]}, {0: "buys boots"}, agents, groups)
    assert out == {0: (1,)}
    assert all("planned a hiking trip" in c[-1]["content"] for c in mod.chats)
    assert "P0: buys boots" in mod.chats[1][-1]["content"]


def test_inter_group_offers_the_named_number_of_candidates():
    import numpy as np

    agents, groups = _world()
    groups += [Group(2, [], "group two"), Group(3, [], "group three")]
    vecs = np.eye(4)
    vecs[2] = vecs[0] * 0.9 + vecs[2] * 0.1
    mod = ScriptedModulator(["[3]"])
    comm = StructuredCommunication(_context(mod, vecs, candidates=1))
    out = comm.inter_group({0: [0]}, {0: "x"}, agents, groups)
    assert "2: group two" in mod.chats[0][-1]["content"]
    assert "group three" not in mod.chats[0][-1]["content"]
    assert out == {0: ()}  # 3 was not offered


def test_random_reaches_agents_outside_the_group_and_is_reproducible():
    agents, groups = _world()
    comm = RandomCommunication(_context(seed=3, size_max=4))  # up to size_max - 1 recipients
    a = comm.route(1, {i: "x" for i in range(6)}, agents, groups).decisions
    b = (
        RandomCommunication(_context(seed=3, size_max=4))
        .route(1, {i: "x" for i in range(6)}, agents, groups)
        .decisions
    )
    assert a == b
    assert all(1 <= len(x.observers) <= 3 and i not in x.observers for i, x in a.items())
    assert any(agents[o].group != agents[i].group for i, x in a.items() for o in x.observers)
    assert comm.route(2, {i: "x" for i in range(6)}, agents, groups).decisions != a


def test_none_means_nobody_observes():
    agents, groups = _world()
    none = NoCommunication(_context())
    d = none.route(1, {i: "x" for i in range(6)}, agents, groups).decisions
    assert all(x.observers == () and x.how == "none" for x in d.values())
    assert none.inter_group({0: [0]}, {0: "x"}, agents, groups) == {}
