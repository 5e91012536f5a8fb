"""python -m matrix.analyze on hand-made generate runs, with a scripted judge and a bag-of-words
encoder: the report, the figures and their per-row files, several runs side by side, and the
errors (not a generate run, a missing simulate run, judge answers that do not parse)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from matrix.analysis.data_analysis import analyze
from matrix.analysis.instruction_judge import TAGS_SCHEMA, Tags, parse_tags
from matrix.common.io import write_json
from matrix.common.validation import ConfigError
from matrix.llm.protocol import Sampling
from matrix.llm.role_llm import build_role_llm
from tests.doubles import PEOPLE, QUESTIONS, BagOfWords, ScriptedBackend, write_sim_dir

GARBLED = {3, 7}  # rows whose judge answer holds no tags


def _tags_for(instruction: str) -> Tags:
    """What the scripted judge answers for an instruction (a function of its text)."""
    words = instruction.split()
    verb = words[0].lower().strip("?,.")
    return Tags(1 + len(words) % 5, 1 + len(instruction) % 5, "Advice seeking", verb, "plan")


def _answer(chat, sampling) -> str:
    text = chat[-1]["content"].split('"""')[1].strip()
    if any(text == QUESTIONS[i] for i in GARBLED):
        return "I am not sure what you mean."
    t = _tags_for(text)
    return "Sure: " + json.dumps(t.__dict__)


def scripted_judge(backend: ScriptedBackend | None = None):
    return build_role_llm("judge", backend or ScriptedBackend(_answer, name="judge"), Sampling())


def write_gen_dir(root: Path, name: str, sim: Path | None, n: int = 12) -> Path:
    gen = root / name / "generate"
    gen.mkdir(parents=True)
    rows = [
        {
            "id": f"{name}-{i:03d}",
            "set": "general",
            "messages": [
                {"role": "user", "content": QUESTIONS[i]},
                {"role": "assistant", "content": f"An answer to question {i}."},
            ],
            "lineage": {"agent_ids": [f"p{i % 6:03d}"], "scenario_ids": [f"s{i % 6:05d}"]},
        }
        for i in range(n)
    ]
    (gen / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    inputs = {"agents": {"path": str(sim / "agents.jsonl")}} if sim else {}
    write_json(
        gen / "manifest.json",
        {"stage": "generate", "config": {"run": {"name": name}}, "inputs": inputs},
    )
    return gen


@pytest.fixture
def gen_run(tmp_path: Path) -> Path:
    return write_gen_dir(tmp_path / "runs", "alpha", write_sim_dir(tmp_path / "sim"))


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _is_png(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG"
    with Image.open(path) as im:
        assert len(set(im.convert("L").getdata())) > 10  # something was drawn


def test_report_figures_and_per_row_files(gen_run: Path) -> None:
    before = sorted(gen_run.rglob("*"))
    result = analyze([gen_run], judge=scripted_judge(), encoder=BagOfWords())
    assert sorted(gen_run.rglob("*")) == before  # the generate folder is left as it was
    out = gen_run.parent / "analysis"
    assert (out / "report.md").is_file() and (out / "analysis.json").is_file()
    for fig in ("fig5_quality_difficulty", "fig6_profile_similarity", "fig7_categories_verbs"):
        _is_png(out / f"{fig}.png")
        assert f"]({fig}.png)" in (out / "report.md").read_text()
    # Fig. 5's rows are the run's rows, with the judge's tags of each one's instruction
    fig5 = _csv(out / "fig5_quality_difficulty.csv")
    assert [r["row_id"] for r in fig5] == [f"alpha-{i:03d}" for i in range(12)]
    for i, r in enumerate(fig5):
        if i in GARBLED:
            assert r["quality"] == r["difficulty"] == ""
        else:
            t = _tags_for(QUESTIONS[i])
            assert (int(r["quality"]), int(r["difficulty"])) == (t.quality, t.difficulty)
    fig7 = {r["row_id"]: r for r in _csv(out / "fig7_categories_verbs.csv")}
    assert fig7["alpha-000"]["verb"] == "how" and fig7["alpha-004"]["verb"] == "write"
    # Fig. 6: every pair of the 6 agents of the simulate run, traced by agent id
    pairs = _csv(out / "fig6_profile_similarity.csv")
    assert len(pairs) == 15
    assert {r["agent_a"] for r in pairs} | {r["agent_b"] for r in pairs} == {
        f"p{i:03d}" for i in range(len(PEOPLE))
    }
    same = {(r["agent_a"], r["agent_b"]) for r in pairs if r["same_group"] == "1"}
    assert ("p000", "p002") in same and ("p000", "p001") not in same  # groups are i % 2
    stats = result["stats"]["alpha"]
    assert stats["rows"] == 12 and stats["judged"] == 12 and stats["judge_failures"] == 2
    assert 0 < stats["distinct_1"] <= 1 and 0 < stats["embedding_spread"] <= 2


def test_judge_answers_that_do_not_parse_are_counted_not_fatal(gen_run: Path) -> None:
    result = analyze([gen_run], judge=scripted_judge(), encoder=BagOfWords())
    assert result["judge_failures"]["alpha"] == ["alpha-003", "alpha-007"]
    report = (gen_run.parent / "analysis" / "report.md").read_text()
    assert "did not parse for 2 row(s) (alpha-003, alpha-007)" in report
    # the failed rows were asked twice (one retry), the others once
    records = [json.loads(x) for x in (gen_run.parent / "analysis/judge/alpha.jsonl").open()]
    assert {r["id"]: len(r["raw"]) for r in records if not r["ok"]} == {
        "alpha-003": 2,
        "alpha-007": 2,
    }


def test_rerun_judges_only_rows_without_tags(gen_run: Path) -> None:
    analyze([gen_run], judge=scripted_judge(), encoder=BagOfWords(), limit=5)
    backend = ScriptedBackend(_answer, name="judge")
    result = analyze([gen_run], judge=scripted_judge(backend), encoder=BagOfWords())
    # rows 0-4 came from the tags file; 5-11 were asked, row 7 twice (its retry)
    assert backend.rows_sent == 7 + 1
    assert result["stats"]["alpha"]["judged"] == 12


def test_two_runs_side_by_side(tmp_path: Path) -> None:
    sim = write_sim_dir(tmp_path / "sim")
    a = write_gen_dir(tmp_path / "runs", "alpha", sim)
    b = write_gen_dir(tmp_path / "runs", "beta", sim, n=8)
    out = tmp_path / "report"
    result = analyze([a, b], out, judge=scripted_judge(), encoder=BagOfWords())
    assert list(result["runs"]) == ["alpha", "beta"]
    md = (out / "report.md").read_text()
    assert "| metric | alpha | beta |" in md and "| rows | 12 | 8 |" in md
    fig5 = _csv(out / "fig5_quality_difficulty.csv")
    assert {r["run"] for r in fig5} == {"alpha", "beta"} and len(fig5) == 20
    assert {r["run"] for r in _csv(out / "fig6_profile_similarity.csv")} == {"alpha", "beta"}
    assert not (a.parent / "analysis").exists()  # --out given: nothing written into the run


def test_missing_simulate_run_skips_fig6_with_a_note(tmp_path: Path) -> None:
    gen = write_gen_dir(tmp_path / "runs", "alpha", tmp_path / "gone")
    result = analyze([gen], judge=scripted_judge(), encoder=BagOfWords())
    out = gen.parent / "analysis"
    assert not (out / "fig6_profile_similarity.png").exists()
    assert (out / "fig5_quality_difficulty.png").is_file()
    assert any("Fig. 6 skipped" in n and "gone" in n for n in result["notes"])
    assert "Fig. 6 skipped: no simulate run found" in (out / "report.md").read_text()


def test_not_a_generate_run_is_a_config_error(tmp_path: Path, gen_run: Path) -> None:
    sim = tmp_path / "sim"
    with pytest.raises(ConfigError, match=rf"{sim}: not a generate run"):
        analyze([sim], encoder=BagOfWords())
    with pytest.raises(ConfigError, match="no such folder"):
        analyze([tmp_path / "nowhere"], encoder=BagOfWords())
    # a run folder holding generate/ is taken as that generate run
    result = analyze([gen_run.parent], encoder=BagOfWords())
    assert result["runs"] == {"alpha": str(gen_run)}


def test_cli_exits_2_naming_the_folder(tmp_path: Path, capsys) -> None:
    from matrix.analysis.analyze_cli import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "empty"), "--no-judge"])
    assert e.value.code == 2
    assert "empty: not a generate run" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"quality": 4, "difficulty": 2, "category": "math", "verb": "Solve", "noun": "equations"}',
            Tags(4, 2, "Math", "solve", "equations"),
        ),
        (
            "quality: good\ndifficulty: very hard\ncategory: Planning",
            Tags(4, 5, "Planning", "", ""),
        ),
        ('{"quality": "5", "difficulty": 1, "category": "poetry"}', Tags(5, 1, "Others", "", "")),
        ('{"quality": 6, "difficulty": 1}', None),
        ('{"quality": 3}', None),
        ("no tags at all", None),
    ],
)
def test_parse_tags(text: str, expected: Tags | None) -> None:
    assert parse_tags(text) == expected


def test_judge_is_asked_for_the_tags_schema(gen_run: Path) -> None:
    seen = []

    def answer(chat, sampling):
        seen.append(sampling)
        return _answer(chat, sampling)

    judge = scripted_judge(ScriptedBackend(answer, name="judge"))
    analyze([gen_run], judge=judge, encoder=BagOfWords(), max_new_tokens=77)
    assert seen and all(s.json_schema == TAGS_SCHEMA and s.max_new_tokens == 77 for s in seen)


def test_cli_unknown_override_exits_2_with_a_suggestion(gen_run: Path, capsys) -> None:
    from matrix.analysis.analyze_cli import main

    with pytest.raises(SystemExit) as e:
        main([str(gen_run), "llm.roles.judge.max_new_tokenz=5"])
    assert e.value.code == 2
    assert "max_new_tokens" in capsys.readouterr().err


def test_cli_unreachable_judge_exits_2_before_any_work(gen_run: Path, capsys) -> None:
    from matrix.analysis.analyze_cli import main

    with pytest.raises(SystemExit) as e:
        main([str(gen_run), "llm.backends.smollm2.model=/nowhere/model"])
    assert e.value.code == 2
    assert "llm.backends.smollm2.model" in capsys.readouterr().err
    assert not (gen_run.parent / "analysis").exists()


def test_default_out_is_beside_the_generate_folder(tmp_path: Path) -> None:
    from matrix.analysis.data_analysis import default_out

    assert default_out(tmp_path / "r" / "generate") == tmp_path / "r" / "analysis"
    assert default_out(tmp_path / "r" / "generate_sft") == tmp_path / "r" / "analysis-generate_sft"
