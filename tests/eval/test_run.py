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

    def __init__(self):
        self.calls = 0

    def generate(self, chats, sampling):
        self.calls += len(chats)
        out = []
        for chat in chats:
            text = chat[-1]["content"]
            reply = (
                ("M" if "[[" not in text else "[[A=B]]")
                if "Best Model Identifier" in text
                else "An answer."
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

    backend2 = ScriptedBackend()
    again = run_evaluate(cfg, roles=_roles(cfg, backend2))
    assert backend2.calls == 0 and again == scores  # everything came from the cache
    ids = [
        json.loads(x)["id"]
        for x in (out / "alpaca_eval2" / "answers.jsonl").read_text().splitlines()
    ]
    assert len(ids) == len(set(ids)) == 8


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
    from matrix.eval.run import validate

    for preset in sorted(p.stem for p in (Path(CONF) / "eval").glob("*.yaml")):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("base", overrides=[f"+eval={preset}", "logger=none"])
        validate(cfg).raise_if_any("evaluate")


def test_eval_limit_caps_every_benchmark_and_keeps_smaller_limits():
    from omegaconf import OmegaConf

    from matrix.eval.run import capped

    assert capped(OmegaConf.create({"limit": None}), 5).limit == 5
    assert capped(OmegaConf.create({"limit": 3}), 5).limit == 3
    assert capped(OmegaConf.create({"limit": 100}), 5).limit == 5
    assert capped(OmegaConf.create({"limit": 100}), None).limit == 100
