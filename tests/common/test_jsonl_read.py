"""The one JSONL reader (matrix.common.io.iter_jsonl) and what each caller asks of it."""

import gzip

import pytest

from matrix.analysis.arms import load_arm
from matrix.common.io import JsonlLog, read_jsonl
from matrix.eval.datafiles import read_jsonl as read_data_jsonl


def test_a_torn_last_line_is_skipped_only_when_asked(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"i": 0}\n\n{"i": 1}\n{"i": 2, "lo')  # a write killed midway
    with pytest.raises(ValueError, match=r"metrics.jsonl:4: not valid JSON"):
        read_jsonl(path)
    assert read_jsonl(path, torn_tail=True) == [{"i": 0}, {"i": 1}]
    assert JsonlLog(path).read() == [{"i": 0}, {"i": 1}]  # an appended file: its reader skips it


def test_a_bad_line_that_is_not_a_torn_tail_still_raises(tmp_path):
    inside = tmp_path / "inside.jsonl"
    inside.write_bytes(b'{"i": 0}\n{"i": 1, "lo\n{"i": 2}\n')
    with pytest.raises(ValueError, match=r"inside.jsonl:2"):
        read_jsonl(inside, torn_tail=True)
    whole = tmp_path / "whole.jsonl"  # a last line with its newline is written whole: corrupt
    whole.write_bytes(b'{"i": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"whole.jsonl:2"):
        read_jsonl(whole, torn_tail=True)
    complete = tmp_path / "complete.jsonl"  # a last row missing only its newline is a row
    complete.write_bytes(b'{"i": 0}\n{"i": 1}')
    assert read_jsonl(complete) == [{"i": 0}, {"i": 1}]


def test_benchmark_files_are_read_by_the_same_reader_gzipped_or_not(tmp_path):
    rows = [{"id": 1, "turns": ["héllo"]}, {"id": 2, "turns": ["x"]}]
    text = "".join(f'{{"id": {r["id"]}, "turns": ["{r["turns"][0]}"]}}\n' for r in rows)
    (tmp_path / "q.jsonl").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "q.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(text + "broken\n")
    assert read_data_jsonl(tmp_path / "q.jsonl") == rows
    with pytest.raises(ValueError, match=r"q.jsonl.gz:3"):  # a bad line names where it is
        read_data_jsonl(tmp_path / "q.jsonl.gz")


def test_comparison_reads_a_killed_trainings_metrics(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    (train / "metrics.jsonl").write_bytes(
        b'{"step": 1, "train/loss": 2.0}\n{"val/loss": 1.9}\n{"step": 2, "train/lo'
    )
    assert load_arm(tmp_path, "a").train_curve == [{"step": 1, "train/loss": 2.0}]
    assert load_arm(tmp_path / "missing", "b").train_curve == []
    assert not (tmp_path / "missing").exists()  # reading creates nothing
