"""The test doubles every test package shares, in one place: LLMs that answer from a script
or from a hash of the prompt, a bag-of-words encoder, a hand-written simulate output and run
dirs in the stages' real on-disk formats."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from matrix.common.io import write_json
from matrix.llm.errors import ContextOverflow
from matrix.llm.protocol import Chat, Completion, Sampling

# -- gen/doubles.py: Shared fixtures for the generate stage: a small hand-written simulation output and
CONF = str(Path(__file__).resolve().parents[1] / "conf")

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


# -- robustness/doubles.py: An LLM double whose answer depends only on its prompt: batch composition, batch size and
WORDS = [
    "garden",
    "budget",
    "neighbours",
    "parking",
    "train",
    "bus",
    "python",
    "script",
    "rumour",
    "election",
    "meal",
    "plan",
    "interest",
    "landlord",
    "stretches",
    "children",
    "interview",
]


class PromptHashLLM:
    name = "prompt-hash"

    def generate(self, chats: Sequence, sampling) -> list[Completion]:
        out = []
        for chat in chats:
            h = hashlib.sha256(repr(chat).encode()).digest()
            words = [WORDS[b % len(WORDS)] for b in h[:12]]
            text = f"[{h[0] % 3}, {h[1] % 3}] " + " ".join(words).capitalize() + "."
            out.append(
                Completion(text=text, prompt_tokens=10, completion_tokens=12, model=self.name)
            )
        return out


# -- llm/helpers.py: Test helpers for the LLM layer.
class ScriptedLLM:
    """Test double: answers with `reply(chat, call_index)` (1-based, per chat); records every
    call as (chat, sampling)."""

    name = "scripted"

    def __init__(self, reply):
        self.reply = reply
        self.calls = []

    def generate(self, chats, **sampling):
        out = []
        for chat in chats:
            self.calls.append((chat, sampling))
            out.append(Completion(self.reply(chat, len(self.calls)), 1, 1))
        return out


class ScriptedBackend:
    """An in-process backend for testing the wrappers: answers with a function of the chat,
    records every batch it receives, and can fail at a given row."""

    def __init__(
        self,
        answer: Callable[[Chat, Sampling], str] | None = None,
        name: str = "scripted",
        fail_at: int | None = None,
        max_prompt_chars: int | None = None,
    ):
        self.answer = answer or (lambda chat, s: "echo: " + chat[-1]["content"])
        self._name = name
        self.fail_at = fail_at
        self.max_prompt_chars = max_prompt_chars
        self.batches: list[list[Chat]] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def rows_sent(self) -> int:
        return sum(len(b) for b in self.batches)

    def generate(self, chats: Sequence[Chat], sampling: Sampling, on_result=None):
        self.batches.append(list(chats))
        out = []
        for i, chat in enumerate(chats):
            size = sum(len(m["content"]) for m in chat)
            if self.max_prompt_chars is not None and size > self.max_prompt_chars:
                raise ContextOverflow(f"row {i}: too long", row=i)
            if self.fail_at is not None and i == self.fail_at:
                raise ConnectionError("backend died")
            text = self.answer(chat, sampling)
            c = Completion(text, prompt_tokens=size // 4 + 1, completion_tokens=len(text) // 4 + 1)
            if on_result is not None:
                on_result(i, c)
            out.append(c)
        return out


class StreamingScriptedBackend(ScriptedBackend):
    """A ScriptedBackend that reports each row as it answers it (a network server's way)."""

    def generate_streaming(self, chats: Sequence[Chat], sampling: Sampling, on_result):
        return self.generate(chats, sampling, on_result)


def chats_of(*questions: str) -> list[Chat]:
    return [[{"role": "user", "content": q}] for q in questions]


# -- experiments/fake_runs.py: Run dirs in the real on-disk format of the generate, train and evaluate stages, with
class BagOfWords:
    """A deterministic stand-in for the sentence encoder (hashed word counts, L2-normalised)."""

    def encode(self, texts):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, sum(map(ord, w)) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


TOPICS = [
    "bake sourdough bread",
    "fix a flat bicycle tyre",
    "plan a trip to Lisbon",
    "write a cover letter",
    "sort a list in Python",
    "calm down before an exam",
]


def write_fake_run(
    run_dir: Path, arm: str, quality: float, experiment: str = "comm_ablation_tiny"
) -> Path:
    cfg = {"experiment_name": experiment, "run": {"name": run_dir.name}}
    rows = [
        {
            "id": f"{arm}-{i}",
            "messages": [
                {"role": "user", "content": f"How do I {t}?"},
                {"role": "assistant", "content": f"Here is how to {t}: step one, step two."},
            ],
            "set": "general",
            "domain": "general",
            "lineage": {
                "scenario_ids": [f"s{i}"],
                "agent_ids": [f"agent-{i % 3}"],
                "agent_indices": [i % 3],
                "agent_names": [f"Agent {i % 3}"],
            },
        }
        for i, t in enumerate(TOPICS)
    ]
    gen = run_dir / "generate"
    _jsonl(gen / "sft.jsonl", rows)
    write_json(
        gen / "manifest.json",
        {
            "stage": "generate",
            "complete": True,
            "config_hash": "abc",
            "config": cfg,
            "counts": {"sft": len(rows), "dpo": 0, "filtered": 2},
            "stats": {
                "sft": {
                    "instruction_distinct_2": round(0.5 * quality, 4),
                    "instruction_embedding_spread": round(0.4 * quality, 4),
                    "scenario_coverage": 0.75,
                    "agent_coverage": 1.0,
                }
            },
        },
    )
    tr = run_dir / "train"
    _jsonl(
        tr / "metrics.jsonl",
        [
            {"time": 0.1, "step": s, "train/loss": 5.0 - quality * s / 4, "train/lr": 1e-3}
            for s in range(1, 9)
        ],
    )
    write_json(
        tr / "manifest.json",
        {
            "stage": "train",
            "complete": True,
            "config": cfg,
            "counts": {"steps": 8, "epochs": 1, "tokens_trained_on": 4096},
            "inputs": {"data": {"path": str(gen / "sft.jsonl"), "sha256": None}},
        },
    )
    ev = run_dir / "evaluate"
    wr = 20.0 * quality
    write_json(
        ev / "scores.json",
        {
            "model": "m",
            "judge": "j",
            "scores": {
                "alpaca_eval2": {
                    "win_rate": wr,
                    "win_rate_se": 3.0,
                    "win_rate_ci95": [wr - 5.9, wr + 5.9],
                    "n": 6,
                    "judge_failures": 0,
                    "avg_length": 300.0,
                }
            },
        },
    )
    _jsonl(
        ev / "alpaca_eval2" / "answers.jsonl",
        [
            {"id": i, "turns": [f"To {t}, start with the first step."]}
            for i, t in enumerate(TOPICS[:3])
        ],
    )
    write_json(
        ev / "manifest.json", {"stage": "evaluate", "complete": True, "config": cfg, "counts": {}}
    )
    return run_dir
