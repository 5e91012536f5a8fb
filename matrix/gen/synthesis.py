"""Writing candidate rows: instruction from the `generator` role, answers from `responder`,
DPO rejected answers from `rejecter`. Every step makes one batched call per role (per turn
for multi-turn), never one call per row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matrix.common.io import text_sha256
from matrix.gen.candidates import Candidate
from matrix.gen.inputs import Seed
from matrix.gen.sources import SeedSource
from matrix.llm.prompts import render_prompt
from matrix.llm.protocol import Chat, Completion
from matrix.llm.role_llm import RoleLLM

# Openings small models put before the actual request ("Sure! Here is the question:").
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly|of course)[!,.]?\s*)?"
    r"(?:here(?:'s| is| are)[^:\n]{0,60}:|(?:the |my |a )?(?:user |first |next |follow-up )?"
    r"(?:request|question|instruction|task|problem|message|prompt|query)\s*(?:\d+)?\s*:)\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'“”‘’`"


_LABEL_LINE = re.compile(r"^\s*([A-Z][A-Za-z' ]{2,30}):", re.MULTILINE)


def template_labels(template: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Section labels of a prompt template ("Situation:", "Your goal:"), to spot echoes."""
    if not template:
        return ()
    return tuple(dict.fromkeys(m + ":" for m in _LABEL_LINE.findall(template.get("user") or "")))


def parse_instruction(
    text: str, speaker: str | None = None, echo_labels: tuple[str, ...] = ()
) -> str | None:
    """The request inside a generator output, or None when nothing usable is left.

    Cuts the text where the model starts echoing its prompt (a line opening with one of the
    template's section labels), then strips preambles, a leading speaker label
    ("Riley: ..."), and wrapping quotes.
    """
    t = text.strip()
    for label in echo_labels:
        m = re.search(rf"(?:^|\n)\s*{re.escape(label)}", t)
        if m:
            t = t[: m.start()].strip()
    for _ in range(3):
        before = t
        t = _PREAMBLE.sub("", t, count=1).strip()
        if speaker and t.lower().startswith(speaker.lower() + ":"):
            t = t[len(speaker) + 1 :].strip()
        if len(t) >= 2 and t[0] in _QUOTES and t[-1] in _QUOTES:
            t = t[1:-1].strip()
        if t == before:
            break
    return t or None


def template_id(set_name: str, prompt_name: str, template: Mapping[str, Any] | None) -> str:
    """`<set>/<prompt>@<hash>`: changes whenever a user edits the template text."""
    if template is None:
        return f"{set_name}/{prompt_name}@none"
    body = f"{template.get('system') or ''}\n---\n{template.get('user') or ''}"
    return f"{set_name}/{prompt_name}@{text_sha256(body)[:8]}"


@dataclass
class SetSpec:
    """One output set of a generator config (e.g. `general`, `complex`, `multi_turn`)."""

    name: str
    kind: str
    domain: str
    source: str  # the seed source's name (each row's lineage)
    need_name: str
    need_text: str
    target: int
    turns: int
    allow_refusals: bool
    prompts: Mapping[str, Any]
    retrieval: Mapping[str, Any]
    seed_source: SeedSource

    @property
    def instruction_prompt(self) -> Mapping[str, Any] | None:
        return self.prompts.get("instruction")


@dataclass
class StepRoles:
    generator: RoleLLM
    responder: RoleLLM
    rejecter: RoleLLM | None


def _fields(seed: Seed, spec: SetSpec, max_actions: int, max_action_chars: int) -> dict[str, str]:
    return {"need": spec.need_text, **seed.fields(max_actions, max_action_chars)}


def _first_instructions(
    spec: SetSpec,
    seeds: Sequence[Seed],
    roles: StepRoles,
    sample_seed: int,
    max_actions: int,
    max_action_chars: int,
) -> list[Completion]:
    where = f"generator.sets.{spec.name}.prompts.instruction"

    def chat_for(s: Seed) -> Chat:
        return render_prompt(
            spec.instruction_prompt, where, **_fields(s, spec, max_actions, max_action_chars)
        )

    return spec.seed_source.first_instructions(roles.generator, seeds, chat_for, sample_seed)


def _respond(
    spec: SetSpec, cands: Sequence[Candidate], roles: StepRoles, first_turn: bool, sample_seed: int
) -> None:
    """Append one assistant turn to every live candidate (one batched responder call)."""
    tpl = spec.prompts["response"]
    where = f"generator.sets.{spec.name}.prompts.response"
    chats: list[Chat] = []
    for c in cands:
        if first_turn:
            chats.append(render_prompt(tpl, where, instruction=c.instruction))
        else:
            # Later turns: the conversation as the user saw it, under the same system prompt.
            system = [{"role": "system", "content": tpl["system"]}] if tpl.get("system") else []
            chats.append(system + list(c.messages))
    for c, out in zip(cands, roles.responder.generate(chats, seed=sample_seed), strict=True):
        c.messages.append({"role": "assistant", "content": out.text})
        c.truncated |= out.finish_reason == "length"


def _conversation_text(c: Candidate, name: str) -> str:
    who = {"user": name, "assistant": "Assistant"}
    return "\n\n".join(f"{who[m['role']]}: {m['content']}" for m in c.messages)


def synthesize(
    spec: SetSpec,
    ids: Sequence[str],
    seeds: Sequence[Seed],
    roles: StepRoles,
    sample_seed: int,
    max_actions: int,
    max_action_chars: int,
) -> list[Candidate]:
    """Candidate rows for `seeds` (one each); failed ones carry `problem` for the filters."""
    cands = [Candidate(i, s, spec.kind) for i, s in zip(ids, seeds, strict=True)]
    outs = _first_instructions(spec, seeds, roles, sample_seed, max_actions, max_action_chars)
    labels = template_labels(spec.instruction_prompt)
    follow_labels = template_labels(spec.prompts.get("follow_up"))
    live: list[Candidate] = []
    for c, out in zip(cands, outs, strict=True):
        speaker = c.seed.agent["profile"]["name"] if c.seed.agent else None
        text = parse_instruction(out.text, speaker, labels)
        if not out.text.strip():
            c.problem = "empty"
        elif text is None:
            c.problem = "unparseable"
        else:
            c.messages.append({"role": "user", "content": text})
            c.truncated |= out.finish_reason == "length"
            live.append(c)
    _respond(spec, live, roles, first_turn=True, sample_seed=sample_seed + 1)

    for turn in range(1, spec.turns):
        tpl = spec.prompts["follow_up"]
        where = f"generator.sets.{spec.name}.prompts.follow_up"
        chats = []
        for c in live:
            fields = _fields(c.seed, spec, max_actions, max_action_chars)
            fields["conversation"] = _conversation_text(c, fields.get("name", "User"))
            chats.append(render_prompt(tpl, where, **fields))
        still: list[Candidate] = []
        outs = roles.generator.generate(chats, seed=sample_seed + 101 * turn)
        for c, out in zip(live, outs, strict=True):
            speaker = c.seed.agent["profile"]["name"] if c.seed.agent else None
            text = parse_instruction(out.text, speaker, follow_labels)
            if text is None:
                c.problem = "empty" if not out.text.strip() else "unparseable"
                continue
            c.messages.append({"role": "user", "content": text})
            still.append(c)
        live = still
        _respond(spec, live, roles, first_turn=False, sample_seed=sample_seed + 1 + turn)

    if spec.kind == "dpo" and live:
        assert roles.rejecter is not None
        # The rejected model sees the bare prompt, as a user of the SFT model would send it.
        prompts = [c.messages[:-1] for c in live]
        for c, out in zip(
            live, roles.rejecter.generate(prompts, seed=sample_seed + 2), strict=True
        ):
            c.rejected = out.text
    return cands
