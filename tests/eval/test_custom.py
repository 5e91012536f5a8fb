"""Your own questions (`eval=custom`): loading, bad rows named by file and line, and the stage."""

import json
import os
import subprocess
import sys
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
    with pytest.raises(ConfigError, match="no file or folder at"):
        load_questions(tmp_path / "missing.jsonl")
    p = _write_jsonl(tmp_path / "q.jsonl", [{"instruction": " "}])
    with pytest.raises(ConfigError, match="no usable question"):
        load_questions(p, on_error="skip")
    # a file without the instruction's column stops before any row, with a map that fits
    p = _write_jsonl(tmp_path / "q.jsonl", [{"text": "a", "gold": "b"}])
    with pytest.raises(ConfigError) as e:
        load_questions(p, on_error="skip")
    assert "no column 'instruction' (eval.benchmarks.custom.columns.instruction)" in str(e.value)
    assert "the file's columns are: text, gold" in str(e.value)
    assert "eval.benchmarks.custom.columns.instruction=text" in str(e.value)


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
    assert "custom.path=nowhere.jsonl: no file or folder at nowhere.jsonl" in msg
    assert "eval.benchmarks.custom.mode: 'triple' is not one of 'auto', 'pairwise', 'single'" in msg
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


def test_evaluate_cli_with_only_a_checkpoint_and_questions_without_references(
    tmp_path, tiny_model_dir
):
    """The command people type: `eval=custom`, their question file (no reference answers) and
    a model folder. The checkpoint replaces the preset's default role, and the questions are
    graded one by one (mode auto -> single), which the log says."""
    questions = _write_jsonl(
        tmp_path / "my_questions.jsonl", [{"instruction": f"Question {i}?"} for i in range(3)]
    )
    root = Path(CONF).parent
    env = {**os.environ, "MATRIX_RUNS_DIR": str(tmp_path / "runs"), "PYTHONPATH": str(root)}
    args = [
        "eval=custom",
        f"eval.benchmarks.custom.path={questions}",
        f"eval.model.checkpoint={tiny_model_dir}",
        *tiny_llm_overrides(tiny_model_dir),  # the judge, on the tiny model too
        "eval.sampling.max_new_tokens=8",
        "eval.benchmarks.custom.judge_sampling.max_new_tokens=8",
    ]
    out = subprocess.run(
        [sys.executable, "evaluate.py", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mode=single" in out.stdout + out.stderr
    (scores,) = (tmp_path / "runs").glob("*/evaluate/scores.json")
    s = json.loads(scores.read_text())
    assert str(tiny_model_dir) in s["model"], s["model"]
    assert s["scores"]["custom"]["mode"] == "single" and s["scores"]["custom"]["n"] == 3
    manifest = json.loads((scores.parent / "manifest.json").read_text())
    assert manifest["inputs"]["model"]["path"] == str(tiny_model_dir)


def test_questions_from_parquet_and_a_datasets_folder(tmp_path):
    """The same questions as a parquet file (columns mapped by `columns`) or a save_to_disk
    folder give the records of the JSONL file; the stage's checks accept them."""
    import datasets

    rows = [json.loads(line) for line in EXAMPLE.read_text().splitlines() if line.strip()]
    expected = load_questions(str(EXAMPLE), need_reference=True)
    renamed = [{"qid": r["id"], "question": r["instruction"], "gold": r["reference"],
                "topic": r["category"]} for r in rows]  # fmt: skip
    datasets.Dataset.from_list(renamed).to_parquet(tmp_path / "q.parquet")
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "qd")
    cols = {"id": "qid", "instruction": "question", "reference": "gold", "category": "topic"}
    strip = lambda items: [{k: v for k, v in it.items() if k != "line"} for it in items]  # noqa: E731
    got = load_questions(tmp_path / "q.parquet", cols, need_reference=True)
    assert strip(got) == strip(expected) and [it["line"] for it in got] == list(range(1, 11))
    got = load_questions(tmp_path / "qd", need_reference=True, split="test")
    assert strip(got) == strip(expected)

    cfg = _cfg(
        tmp_path,
        f"eval.benchmarks.custom.path={tmp_path / 'q.parquet'}",
        *(f"eval.benchmarks.custom.columns.{k}={v}" for k, v in cols.items()),
    )
    assert not validate(cfg)
    with pytest.raises(ConfigError, match=r"splits are test, no 'train'.*custom.split="):
        load_questions(tmp_path / "qd")
    (tmp_path / "q.xlsx").write_bytes(b"PK")
    with pytest.raises(ConfigError, match=r"custom.path=.*q.xlsx: .*not a format.*a CSV file"):
        load_questions(tmp_path / "q.xlsx")
    (tmp_path / "q.txt").write_text(EXAMPLE.read_text())  # a format named reads any suffix
    assert load_questions(tmp_path / "q.txt", fmt="jsonl") == expected
    with pytest.raises(ConfigError, match=r"q.txt: .*not a format"):
        load_questions(tmp_path / "q.txt")


def test_a_checkpoint_replaces_the_default_role_and_both_set_is_an_error(tmp_path):
    from matrix.eval.run import llm_roles

    assert llm_roles(_cfg(tmp_path)) == ["responder", "judge"]  # neither set: responder
    cfg = _cfg(tmp_path, f"eval.model.checkpoint={tmp_path}")
    assert llm_roles(cfg) == ["judge"]
    check_stage(cfg, "evaluate", provided_backends=["smollm2"])
    cfg = _cfg(tmp_path, f"eval.model.checkpoint={tmp_path}", "eval.model.role=judge")
    with pytest.raises(
        ConfigError, match="one of eval.model.checkpoint .* or eval.model.role, not"
    ):
        check_stage(cfg, "evaluate", provided_backends=["smollm2"])
