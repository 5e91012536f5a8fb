"""Your own questions (`eval=custom`): loading, bad rows named by file and line, and the stage."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from matrix.common.validation import ConfigError
from matrix.core.config_check import check_stage
from matrix.eval.question_file import load_questions
from matrix.eval.run import run_evaluate, validate
from matrix.llm.protocol import Completion
from matrix.llm.roles import Roles
from tests.conftest import tiny_llm_overrides

CONF = str(Path(__file__).resolve().parents[2] / "conf")
EXAMPLE = Path(CONF).parent / "matrix/eval/data/custom/example_questions.jsonl"


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


def test_the_shipped_example_has_ten_questions_with_references():
    items = load_questions(str(EXAMPLE), need_reference=True)
    assert len(items) == 10 and len({it["id"] for it in items}) == 10
    assert len({it["category"] for it in items}) == 10
    assert all(it["prompt"] and it["reference"] for it in items)
    assert load_questions("matrix:eval/data/custom/example_questions.jsonl") == items


def test_jsonl_with_mapped_columns(tmp_path):
    p = _write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"qid": 7, "question": " What is 2+2? ", "gold": "4", "topic": "math"},
            {"qid": "b", "question": "Name a prime.", "gold": "", "topic": None},
        ],
    )
    cols = {"id": "qid", "instruction": "question", "reference": "gold", "category": "topic"}
    items = load_questions(p, cols)
    assert [(it["id"], it["prompt"], it["reference"], it["category"]) for it in items] == [
        ("7", "What is 2+2?", "4", "math"),
        ("b", "Name a prime.", None, None),
    ]


def test_csv_with_mapped_columns_and_quoted_newlines(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text(
        'Prompt,Answer\n"Write a haiku\nabout rain.",Drops on the roof\nWhat is H2O?,Water\n',
        encoding="utf-8",
    )
    items = load_questions(p, {"id": None, "instruction": "Prompt", "reference": "Answer"})
    assert [(it["prompt"], it["reference"]) for it in items] == [
        ("Write a haiku\nabout rain.", "Drops on the roof"),
        ("What is H2O?", "Water"),
    ]
    # without an id column each question is named by the line its row ends on
    assert [it["id"] for it in items] == ["3", "4"]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"instruction": "unterminated', "not valid JSON"),
        ('["a", "list"]', "expected a JSON object, got list"),
        ('{"prompt": "wrong column"}', "no instruction in column 'instruction'"),
        ('{"id": "q1", "instruction": "again"}', "duplicate id 'q1'"),
        ('{"instruction": {"nested": 1}}', "column 'instruction' holds a dict"),
    ],
)
def test_a_malformed_jsonl_line_is_named_by_file_and_line(tmp_path, line, why):
    p = _write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "instruction": "fine"}, "", line])
    with pytest.raises(ConfigError) as e:
        load_questions(p)
    msg = str(e.value)
    assert f"{p}:3: " in msg and why in msg and "eval.benchmarks.custom.on_error=skip" in msg
    # on_error=skip keeps the good rows
    assert [it["id"] for it in load_questions(p, on_error="skip")] == ["q1"]


def test_a_malformed_csv_row_is_named_by_file_and_line(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text("instruction,reference\nfine,ok\ntoo,many,fields\nshort\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{p}:3: 3 fields, the header has 2"):
        load_questions(p, {"reference": "reference"})
    items = load_questions(p, {"reference": "reference"}, on_error="skip")
    assert [it["prompt"] for it in items] == ["fine"]  # line 4 has 1 field: skipped too


def test_pairwise_against_references_needs_a_reference_per_row(tmp_path):
    p = _write_jsonl(
        tmp_path / "q.jsonl", [{"instruction": "a", "reference": "x"}, {"instruction": "b"}]
    )
    with pytest.raises(ConfigError, match=rf"{p}:2: no reference answer"):
        load_questions(p, {"reference": "reference"}, need_reference=True)


def test_an_empty_or_absent_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no file at"):
        load_questions(tmp_path / "missing.jsonl")
    p = _write_jsonl(tmp_path / "q.jsonl", [{"text": "a"}])
    with pytest.raises(ConfigError, match="no usable question"):
        load_questions(p, on_error="skip")


def _cfg(tmp_path, *extra):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(
            "base",
            overrides=[
                "+eval=custom",
                "logger=none",
                "llm.cache.enabled=false",
                f"paths.runs_dir={tmp_path}",
                *extra,
            ],
        )


def test_config_errors_are_all_named_before_any_model_loads(tmp_path):
    cfg = _cfg(
        tmp_path,
        "eval.benchmarks.custom.path=nowhere.jsonl",
        "eval.benchmarks.custom.mode=triple",
        "eval.benchmarks.custom.baseline=role",
        "eval.benchmarks.custom.baseline_role=nobody",
    )
    with pytest.raises(ConfigError) as e:
        check_stage(cfg, "evaluate")  # the typed values and the stage's own checks at once
    msg = str(e.value)
    assert "custom.path: no file at nowhere.jsonl" in msg
    assert "eval.benchmarks.custom.mode: 'triple' is not one of 'pairwise', 'single'" in msg
    cfg = _cfg(tmp_path, "eval.benchmarks.custom.baseline=run")
    with pytest.raises(ConfigError, match="baseline=run needs eval.benchmarks.custom.baseline_run"):
        validate(cfg).raise_if_any("evaluate")
    cfg = _cfg(
        tmp_path,
        "eval.benchmarks.custom.baseline=role",
        "eval.benchmarks.custom.baseline_role=nobody",
    )
    with pytest.raises(ConfigError, match="baseline_role set to one of the llm roles"):
        validate(cfg).raise_if_any("evaluate")


class JudgeFavoursModel:
    """Test double backend: the model answers MODEL-<n>, a baseline role BASE-<n>; the pairwise
    judge always prefers the answer starting MODEL-, the single judge rates it 7."""

    name = "scripted"

    def __init__(self, prefix="MODEL"):
        self.prefix = prefix
        self.calls = 0

    def generate(self, chats, sampling):
        self.calls += len(chats)
        out = []
        for chat in chats:
            text = chat[-1]["content"]
            if "<|The Start of Assistant B's Answer|>" in text:
                b = text.split("<|The Start of Assistant B's Answer|>")[1]
                reply = "[[B>>A]]" if b.lstrip().startswith("MODEL-") else "[[A>>B]]"
            elif "[Instruction]" in text:
                reply = "Good. Rating: [[7]]"
            else:
                reply = f"{self.prefix}-{len(text)} answer"
            out.append(Completion(reply, 3, 2))
        return out


def test_pairwise_single_and_previous_run_through_the_stage(tmp_path):
    # pairwise vs the file's references: the judge prefers the model in both orders
    cfg = _cfg(tmp_path, "run.name=pair")
    backend = JudgeFavoursModel()
    roles = Roles(cfg.llm, backends={"smollm2": backend})
    s = run_evaluate(cfg, roles=roles)["custom"]
    assert s["n"] == 10 and s["n_battles"] == 60 and s["judge_failures"] == 0
    assert s["score"] > 90 and s["mode"] == "pairwise" and s["baseline"] == "reference"
    assert s["category/math"] == 100.0
    out = tmp_path / "pair" / "evaluate"
    for f in ("scores.json", "report.md", "scores.png", "custom_winrate_vs_length.png"):
        assert (out / f).exists(), f
    report = (out / "report.md").read_text()
    assert "| custom | score |" in report and "custom_winrate_vs_length.png" in report
    assert backend.calls == 10 + 20  # answers, then two orders per question
    # resume: nothing is asked twice, no duplicate rows
    again = JudgeFavoursModel()
    assert run_evaluate(cfg, roles=Roles(cfg.llm, backends={"smollm2": again}))["custom"] == s
    assert again.calls == 0
    rows = (out / "custom" / "judgments.jsonl").read_text().splitlines()
    assert len(rows) == len({json.loads(r)["id"] for r in rows}) == 10

    # single-answer grading
    cfg = _cfg(tmp_path, "run.name=single", "eval.benchmarks.custom.mode=single")
    s = run_evaluate(cfg, roles=Roles(cfg.llm, backends={"smollm2": JudgeFavoursModel()}))
    assert s["custom"]["score"] == 7.0 and s["custom"]["mode"] == "single"

    # against a previous run's answers: that run answered BASE-..., this one MODEL-...
    cfg = _cfg(tmp_path, "run.name=older")
    run_evaluate(cfg, roles=Roles(cfg.llm, backends={"smollm2": JudgeFavoursModel("BASE")}))
    cfg = _cfg(
        tmp_path,
        "run.name=newer",
        "eval.benchmarks.custom.baseline=run",
        f"eval.benchmarks.custom.baseline_run={tmp_path / 'older' / 'evaluate'}",
    )
    s = run_evaluate(cfg, roles=Roles(cfg.llm, backends={"smollm2": JudgeFavoursModel()}))
    assert s["custom"]["score"] > 90 and s["custom"]["baseline"].startswith("run:")
    judged = (tmp_path / "newer" / "evaluate" / "custom" / "judgments.jsonl").read_text()
    assert judged.count("[[B>>A]]") == judged.count("[[A>>B]]") == 10  # both orders

    # compare two runs like any benchmark
    cfg = _cfg(
        tmp_path,
        "run.name=cmp",
        f"eval.compare=[{tmp_path / 'older' / 'evaluate'},{tmp_path / 'single' / 'evaluate'}]",
    )
    rows = run_evaluate(cfg)["compare"]
    assert rows[0]["benchmark"] == "custom"


def test_a_baseline_role_answers_and_is_cached_with_the_model(tmp_path):
    cfg = _cfg(
        tmp_path,
        "eval.benchmarks.custom.baseline=role",
        "eval.benchmarks.custom.baseline_role=rejecter",
        "eval.benchmarks.custom.columns.reference=null",
    )
    backend = JudgeFavoursModel()
    s = run_evaluate(cfg, roles=Roles(cfg.llm, backends={"smollm2": backend}))["custom"]
    assert s["baseline"] == "role:rejecter" and s["n"] == 10
    assert backend.calls == 10 + 10 + 20  # model, baseline role, judge in two orders
    answers = (tmp_path / "default" / "evaluate" / "custom" / "answers.jsonl").read_text()
    assert all("baseline" in json.loads(r) for r in answers.splitlines())


def test_custom_on_a_tiny_random_model_end_to_end(tmp_path, tiny_model_dir):
    """The real HF backend for model and judge: a random model's judge never gives a verdict,
    so every game is an unparsed loss and is reported as such."""
    questions = _write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"id": f"q{i}", "instruction": f"Question {i}?", "reference": f"Answer {i}."}
            for i in range(5)
        ],
    )
    overrides = [
        *tiny_llm_overrides(tiny_model_dir),
        f"eval.benchmarks.custom.path={questions}",
        "eval.sampling.max_new_tokens=8",
        "eval.benchmarks.custom.judge_sampling.max_new_tokens=8",
    ]
    cfg = _cfg(tmp_path, *overrides)
    s = run_evaluate(cfg)["custom"]
    assert s["n"] == 5 and s["judge_failures"] == 10 and s["score"] < 50
    out = tmp_path / "default" / "evaluate"
    assert all((out / f).exists() for f in ("scores.json", "report.md", "scores.png"))
    # a malformed line stops the stage with the file and line named
    with questions.open("a") as f:
        f.write("{not json\n")
    cfg = _cfg(tmp_path, *overrides, "run.name=broken")
    with pytest.raises(ConfigError, match=rf"{questions}:6: not valid JSON"):
        run_evaluate(cfg)
    assert not (tmp_path / "broken").exists()  # found before the stage started
