"""The evaluate stage end to end with a scripted backend (a test double that replays texts)."""

import json
from pathlib import Path

from hydra import compose, initialize_config_dir

from matrix.eval.run import run_evaluate
from matrix.llm.protocol import Completion
from matrix.llm.roles import Roles

CONF = str(Path(__file__).resolve().parents[2] / "conf")


class ScriptedBackend:
    """Test double backend: judges answer `M`/`m`, everything else gets a fixed answer."""

    name = "scripted"

    def __init__(self, answer: str = "An answer."):
        self.calls = 0
        self.answer = answer

    def generate(self, chats, sampling):
        self.calls += len(chats)
        out = []
        for chat in chats:
            text = chat[-1]["content"]
            reply = (
                ("M" if "[[" not in text else "[[A=B]]")
                if "Best Model Identifier" in text
                else self.answer
            )
            out.append(Completion(reply, 3, 2))
        return out


def _cfg(tmp_path, *extra):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(
            "base",
            overrides=["+eval=demo", "logger=none", f"paths.runs_dir={tmp_path}", *extra],
        )


def _roles(cfg, backend):
    return Roles(cfg.llm, backends={"smollm2": backend})


def test_demo_runs_writes_report_and_resumes_without_duplicates(tmp_path):
    cfg = _cfg(tmp_path)
    backend = ScriptedBackend()
    scores = run_evaluate(cfg, roles=_roles(cfg, backend))
    s = scores["alpaca_eval2"]
    assert s["n"] == 8 and s["judge_failures"] == 0
    assert s["win_rate_ci95"][0] <= s["win_rate"] <= s["win_rate_ci95"][1]
    out = tmp_path / "default" / "evaluate"
    for f in (
        "scores.json",
        "report.md",
        "scores.png",
        "manifest.json",
        "alpaca_eval2_winrate_vs_length.png",
    ):
        assert (out / f).exists(), f
    first_calls = backend.calls
    assert first_calls == 16  # 8 answers + 8 judgments
    spend = json.loads((out / "manifest.json").read_text())["llm"]  # the key every stage uses
    assert spend["roles"]["model"]["calls"] == 8 and spend["roles"]["judge"]["calls"] == 8

    backend2 = ScriptedBackend()
    again = run_evaluate(cfg, roles=_roles(cfg, backend2))
    assert backend2.calls == 0 and again == scores  # everything came from the cache
    ids = [
        json.loads(x)["id"]
        for x in (out / "alpaca_eval2" / "answers.jsonl").read_text().splitlines()
    ]
    assert len(ids) == len(set(ids)) == 8


def _answers(path: Path) -> list[str]:
    return [json.loads(x)["turns"][0] for x in path.read_text().splitlines()]


def test_a_rerun_with_another_config_starts_fresh_instead_of_resuming_old_answers(tmp_path):
    """The answers cache is keyed by item id: resuming it under another config (other sampling,
    model, judge or baseline) would score the old model's answers. Such a folder is set aside."""
    run_evaluate(_cfg(tmp_path), roles=_roles(_cfg(tmp_path), ScriptedBackend()))
    out = tmp_path / "default" / "evaluate"
    assert set(_answers(out / "alpaca_eval2" / "answers.jsonl")) == {"An answer."}

    # a budget never changes results: the finished run is resumed and nothing asked again
    budget = _cfg(tmp_path, "llm.budget.max_tokens=1000000")
    same = ScriptedBackend("Not asked.")
    run_evaluate(budget, roles=_roles(budget, same))
    assert same.calls == 0 and not (tmp_path / "default" / ".stale").exists()

    other = _cfg(tmp_path, "eval.sampling.max_new_tokens=100")
    backend = ScriptedBackend("Another answer.")
    run_evaluate(other, roles=_roles(other, backend))
    assert backend.calls == 16  # 8 answers + 8 judgments, none resumed
    assert set(_answers(out / "alpaca_eval2" / "answers.jsonl")) == {"Another answer."}
    (stale,) = (tmp_path / "default" / ".stale").glob("evaluate__*")
    assert set(_answers(stale / "alpaca_eval2" / "answers.jsonl")) == {"An answer."}

    # a third config sets the second aside too; the first set-aside copy is still there
    third = _cfg(tmp_path, "eval.sampling.max_new_tokens=50")
    run_evaluate(third, roles=_roles(third, ScriptedBackend("A third answer.")))
    kept = sorted((tmp_path / "default" / ".stale").glob("evaluate__*"))
    assert len(kept) == 2 and stale in kept
    assert {a for k in kept for a in _answers(k / "alpaca_eval2" / "answers.jsonl")} == {
        "An answer.",
        "Another answer.",
    }


def test_compare_marks_significance(tmp_path):
    for name, winrate in (("a", 10.0), ("b", 60.0)):
        d = tmp_path / name
        d.mkdir()
        s = {"win_rate": winrate, "win_rate_ci95": [winrate - 5, winrate + 5]}
        (d / "scores.json").write_text(json.dumps({"model": name, "scores": {"alpaca_eval2": s}}))
    cfg = _cfg(tmp_path, f"eval.compare=[{tmp_path / 'a'},{tmp_path / 'b'}]")
    rows = run_evaluate(cfg)["compare"]
    assert rows[0]["significant"] is True and rows[0]["diff"] == 50.0
    assert (tmp_path / "default" / "evaluate" / "compare.md").exists()


def test_every_eval_preset_composes_and_validates(tmp_path):
    from matrix.core.config_check import check_config
    from matrix.eval.run import validate

    for preset in sorted(p.stem for p in (Path(CONF) / "eval").glob("*.yaml")):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("base", overrides=[f"+eval={preset}", "logger=none"])
        check_config(cfg, "evaluate", models=False)  # keys and typed values (settings.py)
        validate(cfg).raise_if_any("evaluate")


def test_eval_limit_caps_every_benchmark_and_keeps_smaller_limits():
    from omegaconf import OmegaConf

    from matrix.eval.run import capped

    assert capped(OmegaConf.create({"limit": None}), 5).limit == 5
    assert capped(OmegaConf.create({"limit": 3}), 5).limit == 3
    assert capped(OmegaConf.create({"limit": 100}), 5).limit == 5
    assert capped(OmegaConf.create({"limit": 100}), None).limit == 100


def test_code_benchmark_records_the_sandbox_walls_in_scores_and_manifest(tmp_path):
    """The walls the samples ran behind (matrix.eval.sandbox_walls) are part of the result."""
    from matrix.eval.sandbox_walls import detect_walls

    cfg = _cfg(tmp_path, "eval=humaneval", "eval.benchmarks.humaneval.limit=2")
    run_evaluate(cfg, roles=_roles(cfg, ScriptedBackend("```python\nraise SystemExit(1)\n```")))
    out = tmp_path / "default" / "evaluate"
    walls = json.loads((out / "scores.json").read_text())["scores"]["humaneval"]["sandbox"]
    assert walls == detect_walls().as_dict()
    assert set(walls) == {"bubblewrap", "namespaces", "rlimits", "guard", "missing"}
    assert walls["guard"] and walls["rlimits"]
    assert json.loads((out / "manifest.json").read_text())["sandbox"] == walls
