"""Shared fixtures for the generate stage: a small hand-written simulation output and
scripted LLM doubles (deterministic stand-ins that return varied, English texts)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from matrix.llm.protocol import Completion

CONF = str(Path(__file__).resolve().parents[2] / "conf")

SCENARIOS = [
    "Riley and Alex argue about the community garden budget and who pays for new tools.",
    "Jamie codes a small website for the bakery and struggles with a broken JavaScript contact form.",
    "Taylor feels furious at a neighbour who keeps parking in her spot and wants revenge.",
    "The book club plans a weekend trip and compares train and bus prices for six people.",
    "Morgan learns Python to automate spreadsheets at the clinic and asks colleagues for help.",
    "A heated online debate about a local election spreads rumours about one candidate.",
]
PEOPLE = ["Riley Chen", "Alex Rivera", "Jamie Patel", "Taylor Novak", "Morgan Lee", "Sam Ortiz"]

# Distinct requests a scripted generator picks from (far apart in embedding space).
QUESTIONS = [
    "How do I split a shared garden budget fairly between five neighbours?",
    "Why does my HTML contact form not send emails, and how do I debug it?",
    "What can I do about a neighbour who keeps parking in my reserved spot?",
    "Is the train or the bus cheaper for six people travelling for a weekend?",
    "Write a Python script that merges all CSV files in a folder into one spreadsheet.",
    "How can I check whether a rumour about an election candidate is true?",
    "Give me a simple weekly meal plan for a vegetarian family of four.",
    "Explain how compound interest works with a small numeric example.",
    "Draft a polite email asking my landlord to repair a leaking kitchen tap.",
    "What stretches help with lower back pain after long days at a desk?",
    "Suggest three indoor activities for children on a rainy afternoon.",
    "How should I prepare for a job interview at a hospital administration office?",
    "What is the difference between a virus and a bacterium?",
    "Help me write a short speech for my grandmother's ninetieth birthday.",
    "How do I repot a cactus without hurting my hands?",
    "Recommend a beginner routine for learning to play the guitar.",
    "How can our book club choose books that everyone will enjoy?",
    "What should I pack for a three day hiking trip in the mountains?",
    "Explain the rules of chess castling in plain words.",
    "How do I politely decline an invitation to a party I cannot attend?",
]


def _pick(*parts: object, n: int) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16) % n


class ScriptedGenerator:
    """Writes one of QUESTIONS per chat, chosen by prompt, sampling seed and batch position
    (so equal prompts in one batch differ, as sampled text would)."""

    name = "scripted-generator"

    def __init__(self, fail_after_calls: int | None = None, constant: str | None = None):
        self.calls = 0
        self.fail_after_calls = fail_after_calls
        self.constant = constant

    def generate(self, chats, sampling):
        self.calls += 1
        if self.fail_after_calls is not None and self.calls > self.fail_after_calls:
            raise RuntimeError("simulated crash")
        out = []
        for i, chat in enumerate(chats):
            text = (
                self.constant
                or QUESTIONS[_pick(chat[-1]["content"], sampling.seed, i, n=len(QUESTIONS))]
            )
            out.append(
                Completion(f'Sure! Here is the request: "{text}"', 50, 12, "stop", self.name)
            )
        return out


class ScriptedResponder:
    name = "scripted-responder"

    def __init__(self, prefix: str = "Here is a clear answer."):
        self.prefix = prefix
        self.calls = 0

    def generate(self, chats, sampling):
        self.calls += 1
        return [
            Completion(
                f"{self.prefix} About '{c[-1]['content'][:60]}': start with the basics, "
                "then take one practical step at a time and check the result.",
                40,
                30,
                "stop",
                self.name,
            )
            for c in chats
        ]


class EchoingRejecter(ScriptedResponder):
    """Answers like the responder for every third row (so chosen == rejected there)."""

    name = "scripted-rejecter"

    def generate(self, chats, sampling):
        self.calls += 1
        good = ScriptedResponder().generate(chats, sampling)
        return [
            g
            if _pick(c[-1]["content"], n=3) == 0
            else Completion("No idea, sorry pal.", 40, 5, "stop", self.name)
            for g, c in zip(good, chats, strict=True)
        ]


def scripted_backends(**gen_kwargs) -> dict:
    return {
        "gen": ScriptedGenerator(**gen_kwargs),
        "resp": ScriptedResponder(),
        "rej": EchoingRejecter(),
    }


SCRIPTED_ROLES = [
    "llm.roles.generator.backend=gen",
    "llm.roles.responder.backend=resp",
    "llm.roles.rejecter.backend=rej",
]


def write_sim_dir(d: Path) -> Path:
    """A simulate output folder: 6 agents, 6 scenarios of 3 participants each."""
    d.mkdir(parents=True)
    agents = [
        {
            "index": i,
            "group": i % 2,
            "goal": f"{n} wants to help the neighbourhood.",
            "personality": "",
            "plan": "",
            "profile": {
                "id": f"p{i:03d}",
                "name": n,
                "bio": f"{n} lives in a small town.",
                "persona": f"{n} is curious, practical and busy.",
                "handle": "",
                "topics": [],
                "posts": [],
            },
        }
        for i, n in enumerate(PEOPLE)
    ]
    rows = []
    for k, summary in enumerate(SCENARIOS):
        members = [k % 6, (k + 1) % 6, (k + 2) % 6]
        rows.append(
            {
                "id": f"s{k:05d}-g{k % 2:03d}",
                "group": k % 2,
                "rounds": [1, 2],
                "participants": members,
                "participant_names": [PEOPLE[m] for m in members],
                "events": [],
                "actions": [f"{PEOPLE[m]}: talks about it (noticed by nobody)" for m in members],
                "summary": summary,
            }
        )
    (d / "agents.jsonl").write_text("".join(json.dumps(a) + "\n" for a in agents))
    (d / "scenarios.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture
def sim_dir(tmp_path) -> Path:
    return write_sim_dir(tmp_path / "sim")


def compose_generate(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(
            "generate", overrides=["logger=none", f"paths.runs_dir={tmp_path / 'runs'}", *overrides]
        )


def read_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
