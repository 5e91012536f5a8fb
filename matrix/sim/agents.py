"""Agents: LLM-written goal, personality and plan from a profile; actions each round with or
without observations; bounded memory with summarization; goal-reached checks.

Every function here takes all agents of a step at once and makes one batched LLM call per
role, never one call per agent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from matrix.llm.prompts import render_prompt
from matrix.llm.role_llm import RoleLLM
from matrix.sim.schemas import Agent, Profile

_YES = re.compile(r"^\W*(yes|yeah|yep|achieved|done|true)\b", re.IGNORECASE)


def _clean(text: str, fallback: str, max_chars: int = 400) -> str:
    text = " ".join((text or "").split())
    text = re.sub(r"^(goal|personality|answer|plan)\s*:\s*", "", text, flags=re.IGNORECASE)
    text = whole_sentences(text[:max_chars])
    return text if text else fallback


_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")


def whole_sentences(text: str) -> str:
    """Drop a trailing half sentence (a generation cut by max_new_tokens) and sentences that
    repeat verbatim; small models loop, and a story made of whole, distinct sentences reads
    as English."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if ends and ends[-1] < len(text.rstrip()):
        text = text[: ends[-1]]
    seen, kept = set(), []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        sent = text[start : m.end()].strip()
        start = m.end()
        key = sent.lower()
        if key and key not in seen:
            seen.add(key)
            kept.append(sent)
    tail = text[start:].strip()
    if tail and tail.lower() not in seen:
        kept.append(tail)
    return " ".join(kept)


def profile_fields(p: Profile) -> dict[str, str]:
    return {
        "name": p.name,
        "bio": p.bio,
        "persona": p.persona,
        "profile": p.describe(),
        "topics": ", ".join(p.topics) or "general",
        "posts": "\n".join(f"- {x}" for x in p.posts[:3]) or "(none)",
    }


# Prompt budget: every action prompt carries profile, goal, plan and memory, and prefill is
# most of a round's compute on small machines, so each part is capped.
MEMORY_SHOWN = 4
MEMORY_ITEM_CHARS = 160
PROFILE_CHARS = 400


def agent_fields(a: Agent, round_: int = 0) -> dict[str, Any]:
    memory = [m[:MEMORY_ITEM_CHARS] for m in a.memory[-MEMORY_SHOWN:]]
    return {
        **profile_fields(a.profile),
        "profile": a.profile.describe(PROFILE_CHARS),
        "goal": a.goal,
        "personality": a.personality,
        "plan": a.plan,
        "round": round_,
        "memory": ((a.memory_summary + "\n") if a.memory_summary else "")
        + ("\n".join(f"- {m}" for m in memory) if memory else "(nothing yet)"),
        "observations": "\n".join(f"- {o}" for o in a.inbox),
    }


def anonymize_llm(llm: RoleLLM, prompts: Mapping, profiles: list[Profile]) -> list[Profile]:
    """The paper's anonymization pass: the LLM rewrites each persona without names, handles
    or places. Falls back to the rule-anonymized text when the answer is empty."""
    from dataclasses import replace

    chats = [
        render_prompt(prompts["anonymize"], "agent.prompts.anonymize", **profile_fields(p))
        for p in profiles
    ]
    outs = llm.generate(chats)
    return [
        replace(p, persona=_clean(o.text, p.persona, 2000))
        for p, o in zip(profiles, outs, strict=True)
    ]


def create_agents(
    llm: RoleLLM, prompts: Mapping, profiles: Sequence[Profile], groups: Sequence[int]
) -> list[Agent]:
    """Goal, personality and an initial plan for every agent: three batched calls."""
    agents = [
        Agent(index=i, profile=p, group=g)
        for i, (p, g) in enumerate(zip(profiles, groups, strict=True))
    ]
    for key, attr in (("goal", "goal"), ("personality", "personality")):
        chats = [
            render_prompt(prompts[key], f"agent.prompts.{key}", **profile_fields(a.profile))
            for a in agents
        ]
        for a, c in zip(agents, llm.generate(chats, temperature=0.0), strict=True):
            setattr(a, attr, _clean(c.text, f"(no {attr} stated)"))
    revise_plans(llm, prompts, agents, round_=0, key="plan")
    return agents


def revise_plans(
    llm: RoleLLM, prompts: Mapping, agents: Sequence[Agent], round_: int, key: str = "revise_plan"
) -> None:
    if not agents:
        return
    chats = [
        render_prompt(prompts[key], f"agent.prompts.{key}", **agent_fields(a, round_))
        for a in agents
    ]
    for a, c in zip(agents, llm.generate(chats, temperature=0.0), strict=True):
        a.plan = _clean(c.text, a.plan or "(no plan yet)", 600)


def act(
    llm: RoleLLM, prompts: Mapping, agents: Sequence[Agent], round_: int, seed: int
) -> list[str]:
    """One action per agent: the with-observation prompt when its inbox holds something."""
    chats = []
    for a in agents:
        key = "act_with_observation" if a.inbox else "act_without_observation"
        chats.append(render_prompt(prompts[key], f"agent.prompts.{key}", **agent_fields(a, round_)))
    outs = llm.generate(chats, seed=seed)
    actions = []
    for a, c in zip(agents, outs, strict=True):
        text = _clean(c.text, "", 600) or f"{a.name} waits and watches what others do."
        actions.append(text)
        if a.inbox:
            a.memory.append(f"Round {round_}: I noticed: " + " | ".join(a.inbox))
        a.memory.append(f"Round {round_}: I did: {text}")
        a.inbox = []
    return actions


def summarize_memories(
    llm: RoleLLM, prompts: Mapping, agents: Sequence[Agent], max_items: int, keep: int
) -> int:
    """Fold the oldest memories of agents over `max_items` into their running summary."""
    over = [a for a in agents if len(a.memory) > max_items]
    if not over:
        return 0
    chats = []
    for a in over:
        old = a.memory[: len(a.memory) - keep]
        fields = {
            **agent_fields(a),
            "old_memories": "\n".join(f"- {m}" for m in old),
            "summary": a.memory_summary or "(none)",
        }
        chats.append(
            render_prompt(prompts["memory_summary"], "agent.prompts.memory_summary", **fields)
        )
    for a, c in zip(over, llm.generate(chats, temperature=0.0), strict=True):
        a.memory_summary = _clean(c.text, a.memory_summary, 800)
        a.memory = a.memory[len(a.memory) - keep :]
    return len(over)


def check_goals(llm: RoleLLM, prompts: Mapping, agents: Sequence[Agent], round_: int) -> int:
    """Ask each active agent whether its goal is reached; mark those who say yes."""
    if not agents:
        return 0
    chats = [
        render_prompt(prompts["goal_check"], "agent.prompts.goal_check", **agent_fields(a, round_))
        for a in agents
    ]
    n = 0
    for a, c in zip(agents, llm.generate(chats, temperature=0.0, max_new_tokens=4), strict=True):
        if _YES.match(c.text or ""):
            a.done, a.done_round = True, round_
            n += 1
    return n
