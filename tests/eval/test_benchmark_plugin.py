"""A benchmark defined outside matrix, named by `_target_` alone (the README's "add a
benchmark" row): the evaluate stage loads, answers, judges, scores, reports and resumes it."""

import json
import textwrap

import pytest

from matrix.common.validation import ConfigError
from matrix.eval.run import run_evaluate
from tests.eval.test_run import ScriptedBackend, _cfg, _roles

ECHO = '''
from matrix.eval.benchmarks.base import Benchmark


class Echo(Benchmark):
    """Asks each word back; scores the share of answers that contain it (a toy)."""

    name = "echo"
    uses_judge = False

    def load(self):
        words = self.opt("words", ["yes", "no", "maybe"])
        return self.limit([{"id": f"q{i}", "word": w} for i, w in enumerate(words)])

    def answer(self, model, items):
        chats = [[{"role": "user", "content": f"Say {it['word']}."}] for it in items]
        return [{"id": it["id"], "turns": [o.text]} for it, o in zip(items, model.generate(chats))]

    def judge(self, judge, items, answers):
        word = {it["id"]: it["word"] for it in items}
        return [{"id": a["id"], "hit": word[a["id"]] in a["turns"][0]} for a in answers]

    def score(self, items, answers, judgments):
        return {"n": len(judgments), "hit_rate": sum(j["hit"] for j in judgments) / len(judgments)}

    @classmethod
    def config_errors(cls, bcfg, cfg):
        return [] if bcfg.get("words", ["x"]) else ["words: give at least one word"]
'''


@pytest.fixture
def echo_module(tmp_path, monkeypatch):
    (tmp_path / "my_benchmarks.py").write_text(textwrap.dedent(ECHO))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_benchmarks.Echo"
    import sys

    sys.modules.pop("my_benchmarks", None)


def test_a_users_benchmark_runs_by_config_alone(tmp_path, echo_module):
    overrides = (
        "~eval.benchmarks.alpaca_eval2",
        f"+eval.benchmarks.echo._target_={echo_module}",
        "+eval.benchmarks.echo.words=[yes,maybe]",
    )
    cfg = _cfg(tmp_path / "runs", *overrides)
    backend = ScriptedBackend("yes")
    scores = run_evaluate(cfg, roles=_roles(cfg, backend))
    assert scores["echo"] == {"n": 2, "hit_rate": 0.5}
    out = tmp_path / "runs" / "default" / "evaluate"
    assert json.loads((out / "scores.json").read_text())["judge"] == "-"  # no judge asked
    assert backend.calls == 2
    again = ScriptedBackend("maybe")
    assert run_evaluate(cfg, roles=_roles(cfg, again))["echo"]["hit_rate"] == 0.5
    assert again.calls == 0  # nothing asked again: the answers are on disk


def test_a_users_benchmark_is_checked_before_any_model_loads(tmp_path, echo_module):
    cfg = _cfg(
        tmp_path, f"+eval.benchmarks.echo._target_={echo_module}", "+eval.benchmarks.echo.words=[]"
    )
    with pytest.raises(ConfigError, match=r"eval.benchmarks.echo: words: give at least one"):
        run_evaluate(cfg, roles=_roles(cfg, ScriptedBackend()))
    cfg = _cfg(tmp_path, "+eval.benchmarks.nope._target_=my_benchmarks.Nope")
    with pytest.raises(ConfigError, match=r"eval.benchmarks.nope._target_: cannot import"):
        run_evaluate(cfg, roles=_roles(cfg, ScriptedBackend()))
