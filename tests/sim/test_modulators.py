"""The paper's modulator mechanisms through the simulate stage a user runs.

Every LLM role is a scripted world (a test double that answers each prompt by its kind and
records it), so what is checked is what the engine sends and does: one routing call per
group per step, inter-group news routed by the receiving group's modulator, the group's
scenario memory in the modulator's prompts, and the participants' goals in the summarizer's.
"""

import json
import re

from matrix.common.io import read_jsonl
from matrix.llm.protocol import Completion
from matrix.llm.roles import Roles
from matrix.sim.run import run_simulate
from tests.conftest import compose

_ITEM = re.compile(r"^([A-Z]{1,2})\. ", re.MULTILINE)
_ROUND = re.compile(r"^(\d+): ", re.MULTILINE)


class ScriptedWorld:
    """Answers by prompt kind; every chat is kept with the kind it was taken for."""

    name = "scripted-world"

    def __init__(self):
        self.log: list[tuple[str, str]] = []  # (kind, user text)

    def kind(self, chat) -> str:
        system = chat[0]["content"] if chat[0]["role"] == "system" else ""
        user = chat[-1]["content"]
        if "which members" in user.lower() and "notice" in user.lower():
            return "route"
        if "Which other communities would care" in user:
            return "inter_group"
        if "scenarios of a social simulation" in system:
            return "scenario"
        if "most important goal" in user:
            return "goal"
        if "Answer yes or no" in user:
            return "goal_check"
        return "other"

    def generate(self, chats, sampling):
        out = []
        for chat in chats:
            kind, user = self.kind(chat), chat[-1]["content"]
            self.log.append((kind, user))
            if kind == "route":  # every item to member 0 and 1 (an actor's own id is dropped)
                text = "\n".join(f"{x}: [0, 1], they care" for x in _ITEM.findall(user))
            elif kind == "inter_group":  # tell every group offered
                text = f"[{', '.join(_ROUND.findall(user.split('Other communities:')[1]))}]"
            elif kind == "scenario":
                text = f"SCENARIO-{sum(k == 'scenario' for k, _ in self.log)} happened here."
            elif kind == "goal":
                text = f"They want to reach GOAL-{len(self.log)}."
            elif kind == "goal_check":
                text = "No."
            else:
                text = "Someone posts an update about a shared project."
            out.append(Completion(text, 10, 5, "stop", self.name))
        return out


def test_modulators_route_per_group_with_memory_news_and_goals(tmp_path):
    cfg = compose(
        "simulate",
        ["debug=tiny", f"paths.runs_dir={tmp_path}", "logger=none", "run.name=mod"],
    )
    world = ScriptedWorld()
    roles = Roles(cfg.llm, backends={"smollm2": world}, cache=False)
    counts = run_simulate(cfg, roles=roles)
    out = tmp_path / "mod" / "simulate"
    events = read_jsonl(out / "events.jsonl")
    rounds, groups = counts["rounds"], counts["groups"]
    assert rounds == 4 and groups == 2

    # one routing call per group per step: 8 agents' actions in 2 calls a round, no retries
    routes = [u for k, u in world.log if k == "route"]
    assert len(routes) == groups * rounds
    assert all(e["routing"] == "modulator" for e in events)
    # ...and the round's two calls hold all 8 actions (round 1: no news yet)
    assert sum(len(_ITEM.findall(u)) for u in routes[:groups]) == 8
    assert all(e["action"] in "".join(routes[:groups]) for e in events if e["round"] == 1)

    # inter-group: group 0 tells group 1 in round 1; group 1's modulator routes that news in
    # round 2 to its own members, who find it in their inboxes (and memories)
    news_routes = [u for u in routes[groups:] if "news from another community" in u]
    assert len(news_routes) == groups * (rounds - 1)
    agents = read_jsonl(out / "agents.jsonl")
    scenarios = read_jsonl(out / "scenarios.jsonl")
    for s in scenarios[groups:]:  # rounds 3-4: news lines, read by the receiving group's members
        news = [x for x in s["actions"] if x.startswith("News from another community")]
        assert news
        members = {agents[i]["profile"]["name"] for i in s["participants"]}
        for x in news:
            readers = x.rsplit("(read by ", 1)[1].rstrip(")").split(", ")
            assert set(readers) <= members and readers

    # memory: the first scenarios (after round 2) appear in later routing and sharing prompts
    inter = [u for k, u in world.log if k == "inter_group"]
    assert "SCENARIO-" not in routes[0] and "SCENARIO-" not in inter[0]
    assert all("SCENARIO-" in u for u in routes[2 * groups :])
    assert all("SCENARIO-" in u for u in inter[2 * groups :])

    # the summarizer sees every participant's goal and the group's description
    goals = [a["goal"] for a in agents]
    state_groups = {g["id"]: g for g in json.loads((out / "groups.json").read_text())["groups"]}
    summaries = [u for k, u in world.log if k == "scenario"]
    assert len(summaries) == len(scenarios) >= 2
    for s, prompt in zip(scenarios, summaries, strict=True):
        for i in s["participants"]:
            assert goals[i] in prompt
        assert state_groups[s["group"]]["description"] in prompt
