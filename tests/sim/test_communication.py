"""Each communication mode changes who observes what, as the paper specifies.

The structured mode is driven by a scripted modulator (a test double that replays fixed
answers) so the routing logic itself is what is checked."""

from matrix.llm.protocol import Completion, Sampling
from matrix.llm.roles import RoleLLM
from matrix.sim.communication import (
    Group,
    NoCommunication,
    RandomCommunication,
    StructuredCommunication,
)
from matrix.sim.schemas import Agent, Profile

PROMPTS = {
    "intra_group": {"user": "{members}\n{actor_id} {actor_name}: {action}"},
    "retry_hint": "Answer with a list.",
    "inter_group": {"user": "{description}\n{events}\n{groups}"},
}


class ScriptedModulator:
    """Test double: answers each chat with the next scripted reply."""

    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.batches = []

    def generate(self, chats, sampling: Sampling):
        self.batches.append(len(chats))
        return [Completion(self.replies.pop(0), 1, 1) for _ in chats]


def _world():
    agents = [
        Agent(
            index=i,
            profile=Profile(id=str(i), name=f"P{i}", bio="", persona=f"person {i}"),
            group=0 if i < 3 else 1,
        )
        for i in range(6)
    ]
    groups = [Group(0, [0, 1, 2], "group zero"), Group(1, [3, 4, 5], "group one")]
    return agents, groups


def test_structured_routes_by_the_modulator_answer_in_one_batch():
    agents, groups = _world()
    # answers use member numbers local to the group (0, 1, 2)
    mod = ScriptedModulator(["[1], friends", "[]", "[0, 2], both care", "[1]", "[0, 2]", "[1]"])
    comm = StructuredCommunication(RoleLLM("modulator", mod, Sampling()), PROMPTS, None)
    d = comm.route(1, {i: f"action {i}" for i in range(6)}, agents, groups)
    assert mod.batches == [6]  # every action of the round in one batched call
    assert d[0].observers == (1,) and d[0].how == "modulator" and d[0].reason == "friends"
    assert d[1].observers == ()
    assert d[2].observers == (0,)  # local ids 0,2 -> agent 0 (2 is the actor itself)
    assert d[3].observers == (4,)
    assert d[4].observers == (3, 5)


def test_structured_retries_once_then_falls_back_to_the_whole_group():
    agents, groups = _world()
    # first pass: action 0 unparseable; retry: still garbage -> fallback broadcast
    mod = ScriptedModulator(["no idea", "[0]", "garbage again"])
    comm = StructuredCommunication(RoleLLM("modulator", mod, Sampling()), PROMPTS, None)
    d = comm.route(1, {0: "a", 1: "b"}, agents, groups)
    assert mod.batches == [2, 1]
    assert d[1].observers == (0,) and d[1].how == "modulator"
    assert d[0].how == "fallback" and d[0].observers == (1, 2)
    assert comm.fallbacks == 1


def test_structured_inter_group_forwards_to_chosen_groups():
    agents, groups = _world()
    mod = ScriptedModulator(["[1], same topic", "[]"])
    comm = StructuredCommunication(RoleLLM("modulator", mod, Sampling()), PROMPTS, None)
    out = comm.inter_group({0: ["P0: hello"], 1: ["P3: hi"]}, agents, groups)
    assert out == {0: (1,), 1: ()}


def test_random_reaches_agents_outside_the_group_and_is_reproducible():
    agents, groups = _world()
    comm = RandomCommunication(seed=3, max_recipients=3)
    a = comm.route(1, {i: "x" for i in range(6)}, agents, groups)
    b = RandomCommunication(seed=3, max_recipients=3).route(
        1, {i: "x" for i in range(6)}, agents, groups
    )
    assert a == b
    assert all(1 <= len(x.observers) <= 3 and i not in x.observers for i, x in a.items())
    assert any(agents[o].group != agents[i].group for i, x in a.items() for o in x.observers)
    assert comm.route(2, {i: "x" for i in range(6)}, agents, groups) != a


def test_none_means_nobody_observes():
    agents, groups = _world()
    d = NoCommunication().route(1, {i: "x" for i in range(6)}, agents, groups)
    assert all(x.observers == () and x.how == "none" for x in d.values())
    assert NoCommunication().inter_group({0: ["x"]}, agents, groups) == {}
