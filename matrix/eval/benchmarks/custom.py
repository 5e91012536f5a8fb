"""Your own questions: a table of instructions (JSONL, CSV, parquet, a datasets folder or a
cached dataset), judged pairwise or single-answer.

    python evaluate.py eval=custom eval.benchmarks.custom.path=my.jsonl

Each row is one question. `columns` maps the fields to the file's column names: `instruction`
(required), `id` (optional; the line number otherwise, so give ids if you will edit the file
between resumed runs), `reference` (an optional reference answer) and `category` (optional;
scores are also reported per category). A row that cannot be used (not JSON, not an object, no
instruction, a duplicate id, no reference where the baseline needs one) is named by file and
line, and fails the run (`on_error: fail`, the default) or is skipped (`on_error: skip`)
(the file is read by `matrix.eval.question_file`).

Modes (`auto`, the default: `pairwise`, unless the baseline is the file's references and no
question has one: then `single`, which needs none, and the log says so):
- `pairwise`: the model's answer against a baseline answer to the same question, judged in both
  orders with Arena-Hard's judge prompt and scored with Bradley-Terry as a 0-100 win rate vs the
  baseline with a bootstrap 95% CI. This is the `arena_hard` benchmark's own judge and scoring
  (`ArenaHard.judge/score`), applied to these questions. The baseline is `baseline: reference`
  (the file's reference answers), `baseline: role` (answers by the llm role `baseline_role`,
  with that role's own sampling settings, cached with the model's answers) or `baseline: run`
  (the model answers of a previous evaluation of the same file: `baseline_run` is that evaluate
  stage folder, or its `custom/answers.jsonl`).
- `single`: a 1-10 rating per answer with MT-Bench's single-answer judge prompts (`single-v1`;
  the reference-guided `single-math-v1` for rows with a reference answer); the mean rating with
  a bootstrap 95% CI, per category, and unparsed ratings counted as 1 (as `mt_bench`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from matrix.common.io import jsonl_lines
from matrix.common.tables import open_table
from matrix.common.validation import ConfigError
from matrix.eval.benchmarks.arena_hard import ArenaHard
from matrix.eval.benchmarks.base import Benchmark, Record, by_id, single_turn
from matrix.eval.benchmarks.mt_bench import FAILED_RATING, bootstrap_mean_ci
from matrix.eval.bradley_terry import verdict_to_battles
from matrix.eval.datafiles import read_jsonl
from matrix.eval.judging import judge_batch, parse_rating
from matrix.eval.question_file import KEY, load_questions

log = logging.getLogger(__name__)
# Question files this process has said it grades single-answer (mode auto, no references).
_SINGLE_LOGGED: set[str] = set()


def baseline_answers_path(run: str | Path) -> Path:
    """`custom/answers.jsonl` of a previous evaluate stage folder (or that file itself)."""
    p = Path(run).expanduser()
    return p if p.is_file() else p / "custom" / "answers.jsonl"


class Custom(Benchmark):
    name = "custom"

    def __init__(self, cfg: DictConfig | dict | None = None):
        super().__init__(cfg)
        self.roles: Any = None
        self._pairwise = ArenaHard(self.cfg)  # the same judge prompt, verdicts and scoring
        self._mode: str | None = None

    @property
    def mode(self) -> str:
        """pairwise | single; `mode: auto` is pairwise, unless the baseline is the file's
        reference answers and it has none: then single (which needs none), logged."""
        if self._mode is None:
            self._mode = str(self.opt("mode", "auto"))
            if self._mode == "auto":
                self._mode = self._auto_mode()
        return self._mode

    def _auto_mode(self) -> str:
        if self.baseline != "reference" or any(q["reference"] for q in self._questions(False)):
            return "pairwise"
        path = str(self.opt("path", ""))
        if path in _SINGLE_LOGGED:  # checked before the stage, then run: said once
            return "single"
        _SINGLE_LOGGED.add(path)
        column = (self.opt("columns", {}) or {}).get("reference")
        log.info(
            "%s: no question has a reference answer (column %r), so each answer is graded "
            "alone (%s.mode=single, MT-Bench's 1-10 judge); for a win rate, give references or "
            "set %s.baseline=role or run",
            path,
            column,
            KEY,
            KEY,
        )
        return "single"

    def _questions(self, need_reference: bool) -> list[Record]:
        return load_questions(
            self.opt("path", ""),
            dict(self.opt("columns", {})),
            str(self.opt("format", "auto")),
            str(self.opt("on_error", "fail")),
            need_reference=need_reference,
            split=self.opt("split", None),
        )

    @property
    def baseline(self) -> str:
        return str(self.opt("baseline", "reference"))

    @classmethod
    def config_errors(cls, bcfg: DictConfig, cfg: DictConfig) -> list[str]:
        """Errors in this benchmark's settings, found before any model is loaded."""
        errors = []
        mode, baseline = bcfg.get("mode") or "auto", bcfg.get("baseline") or "reference"
        if bcfg.get("path"):
            try:
                open_table(str(bcfg.path), f"{KEY}.path", bcfg.get("split"), csv=True)
            except ConfigError as e:
                errors.append(str(e))
        if mode in ("pairwise", "auto") and baseline == "role":
            role = bcfg.get("baseline_role")
            roles = (cfg.get("llm") or {}).get("roles") or {}
            if not role or role not in roles:
                errors.append(
                    f"{KEY}.baseline=role needs {KEY}.baseline_role set to one of the llm roles "
                    f"({', '.join(sorted(roles))}); got {role!r}"
                )
        if mode in ("pairwise", "auto") and baseline == "run":
            run = bcfg.get("baseline_run")
            if not run or not baseline_answers_path(run).is_file():
                errors.append(
                    f"{KEY}.baseline=run needs {KEY}.baseline_run set to a previous evaluate stage "
                    f"folder that evaluated `custom` (its custom/answers.jsonl); got {run!r}"
                )
        if not errors:  # the rows themselves: a bad line is named before any model loads
            try:
                cls(bcfg).load()
            except ConfigError as e:
                errors.append(str(e))
        return errors

    def bind_roles(self, roles: Any) -> None:
        self.roles = roles

    def load(self) -> list[Record]:
        items = self._questions(self.mode == "pairwise" and self.baseline == "reference")
        items = self.limit(items)
        if self.mode == "pairwise" and self.baseline == "run":
            self._attach_run_baseline(items)
        elif self.mode == "pairwise" and self.baseline == "reference":
            for it in items:
                it["baseline"] = it["reference"]
        return items

    def _attach_run_baseline(self, items: list[Record]) -> None:
        path = baseline_answers_path(self.opt("baseline_run", ""))
        previous = {}
        for lineno, row, error in jsonl_lines(path):
            if error is not None or not isinstance(row, dict) or "id" not in row:
                raise ConfigError(f"{path}:{lineno}: not an answer row ({error or 'no id'})")
            previous[str(row["id"])] = row["turns"][0]
        missing = [it["id"] for it in items if it["id"] not in previous]
        if missing:
            raise ConfigError(
                f"{KEY}.baseline_run: {path} has no answer for {len(missing)} of {len(items)} "
                f"questions (ids {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); "
                "it must be an evaluation of the same question file"
            )
        for it in items:
            it["baseline"] = previous[it["id"]]

    def answer(self, model: Any, items: list[Record]) -> list[Record]:
        sampling = self.opt("sampling", {})
        texts = single_turn(model, [it["prompt"] for it in items], **sampling)
        rows = [{"id": it["id"], "turns": [t]} for it, t in zip(items, texts, strict=True)]
        if self.mode == "pairwise" and self.baseline == "role":
            if self.roles is None:
                raise ConfigError(f"{KEY}.baseline=role: no llm roles were given to the benchmark")
            role = self.roles.get(str(self.opt("baseline_role", "")))
            base = single_turn(role, [it["prompt"] for it in items])
            for row, text in zip(rows, base, strict=True):
                row["baseline"] = text
        return rows

    def _with_baseline(self, items: list[Record], answers: list[Record]) -> list[Record]:
        """Items carrying their baseline answer (from the answer rows for baseline=role)."""
        if all("baseline" in it for it in items):
            return items
        ans = by_id(answers)
        return [{**it, "baseline": ans[it["id"]]["baseline"]} for it in items]

    def judge_calls(self, n_items: int) -> int:
        return 2 * n_items if self.mode == "pairwise" else n_items

    def judge(self, judge: Any, items: list[Record], answers: list[Record]) -> list[Record]:
        if self.mode == "pairwise":
            return self._pairwise.judge(judge, self._with_baseline(items, answers), answers)
        prompts = {p["name"]: p for p in read_jsonl("mt_bench/judge_prompts.jsonl")}
        ans = by_id(answers)
        chats = []
        for it in items:
            p = prompts["single-math-v1" if it["reference"] else "single-v1"]
            fields = {"question": it["prompt"], "answer": ans[it["id"]]["turns"][0]}
            if it["reference"]:
                fields["ref_answer_1"] = it["reference"]
            chats.append(
                [
                    {"role": "system", "content": p["system_prompt"]},
                    {"role": "user", "content": p["prompt_template"].format(**fields)},
                ]
            )
        out = judge_batch(judge, chats, parse_rating, **self.opt("judge_sampling", {}))
        return [{"id": it["id"], **j.as_dict()} for it, j in zip(items, out, strict=True)]

    def score(self, items: list[Record], answers: list[Record], judgments: list[Record]) -> dict:
        if self.mode == "pairwise":
            with_base = self._with_baseline(items, answers)
            out = {
                **self._pairwise.score(with_base, answers, judgments),
                "mode": "pairwise",
                "baseline": self._baseline_name(),
            }
            per_item = self.per_item_lengths(with_base, answers, judgments)
            for cat, wins in self._by_category(items, [w for _, w in per_item]).items():
                out[f"category/{cat}"] = 100 * float(np.mean(wins))
            return out
        jud = by_id(judgments)
        ratings = [
            jud[it["id"]]["verdict"] if jud[it["id"]]["ok"] else FAILED_RATING for it in items
        ]
        arr = np.array(ratings, dtype=float)
        out = {
            "score": float(arr.mean()),
            "score_ci95": bootstrap_mean_ci(arr),
            "mode": "single",
            "n": len(items),
            "judge_failures": sum(not jud[it["id"]]["ok"] for it in items),
        }
        for cat, values in self._by_category(items, ratings).items():
            out[f"category/{cat}"] = float(np.mean(values))
        return out

    def _baseline_name(self) -> str:
        if self.baseline == "role":
            return f"role:{self.opt('baseline_role', '')}"
        if self.baseline == "run":
            return f"run:{self.opt('baseline_run', '')}"
        return "reference"

    @staticmethod
    def _by_category(items: list[Record], values: list[float]) -> dict[str, list[float]]:
        per: dict[str, list[float]] = {}
        for it, v in zip(items, values, strict=True):
            if it["category"]:
                per.setdefault(it["category"], []).append(v)
        return dict(sorted(per.items()))

    def per_item_lengths(self, items: list[Record], answers: list[Record], judgments: list[Record]):
        """(answer length, share of the two games won) per item, for the win-rate-vs-length plot;
        empty in single mode. A strong verdict counts once here, an unparsed game as a loss."""
        if self.mode != "pairwise":
            return []
        ans, jud = by_id(answers), by_id(judgments)
        points = []
        for it in items:
            games = jud[it["id"]]["games"]
            won = [
                np.mean(verdict_to_battles(g["verdict"], model_is_a, 1)) if g["ok"] else 0.0
                for g, model_is_a in zip(games, (False, True), strict=True)
            ]
            points.append((len(ans[it["id"]]["turns"][0]), float(np.mean(won))))
        return points
