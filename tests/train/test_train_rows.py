"""Malformed training rows: each is named by file and line, then skipped and counted
(data.on_error=skip, the default) or fatal (data.on_error=fail)."""

import json

import pytest

from matrix.common.validation import ConfigError
from matrix.core.config_check import check_stage
from matrix.train.examples import load_rows
from matrix.train.run import run_train
from tests.train.conftest import compose_train, tiny_overrides

GOOD_SFT = {
    "messages": [
        {"role": "user", "content": "How do I water a cactus?"},
        {"role": "assistant", "content": "Rarely: once the soil is dry."},
    ]
}
MAX_LINE = 2000


def _msgs(**changes):
    row = json.loads(json.dumps(GOOD_SFT))
    for k, v in changes.items():
        i, field = k.split("_")
        if v is None:
            del row["messages"][int(i)][field]
        else:
            row["messages"][int(i)][field] = v
    return row


def _line(obj) -> bytes:
    return json.dumps(obj).encode()


# (line, the reason load_rows gives); None marks a good row. Line numbers are 1-based and
# count the blank line.
SFT_LINES = [
    (_line(GOOD_SFT), None),
    (b"{not json", "not valid JSON"),
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "invalid UTF-8 at byte 46"),
    (b"", None),  # blank: ignored, still counted as a line
    (_line([GOOD_SFT]), "expected a JSON object, got list"),
    (_line({"text": "hi"}), "missing field messages"),
    (_line({"messages": "hi"}), "`messages` should be a list of {role, content} messages, got str"),
    (_line({"messages": []}), "`messages` is empty"),
    (_line(_msgs(**{"1_content": 42})), "`messages[1].content` should be a string, got int"),
    (_line(_msgs(**{"1_content": "  "})), "`messages[1].content` is empty"),
    (_line(_msgs(**{"0_role": "bot"})), "`messages[0].role` is 'bot', not one of"),
    (_line(_msgs(**{"0_role": None})), "`messages[0].role` is None"),
    (_line({"messages": GOOD_SFT["messages"][:1]}), "no assistant message"),
    (_line({**GOOD_SFT, "pad": "x" * 5000}), "line of 5"),  # over MAX_LINE, never parsed
    (_line(GOOD_SFT), None),  # still read correctly after the long line
]


def _write(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_every_malformed_sft_row_is_named_by_line_then_skipped(tmp_path):
    path = _write(tmp_path / "sft.jsonl", [line for line, _ in SFT_LINES])
    rows, bad = load_rows(path, "chat", "skip", max_line_bytes=MAX_LINE)
    assert rows == [GOOD_SFT, GOOD_SFT]
    expected = [(n, why) for n, (line, why) in enumerate(SFT_LINES, 1) if why]
    assert len(bad.skipped) == len(expected)
    for msg, (n, why) in zip(bad.skipped, expected, strict=True):
        assert msg.startswith(f"{path}:{n}: "), msg
        assert why in msg, (msg, why)


def test_fail_policy_stops_at_the_first_bad_row_naming_file_line_and_key(tmp_path):
    path = _write(tmp_path / "sft.jsonl", [line for line, _ in SFT_LINES])
    with pytest.raises(ConfigError, match=r"sft.jsonl:2: not valid JSON .*data.on_error=skip"):
        load_rows(path, "chat", "fail", max_line_bytes=MAX_LINE)


def test_malformed_dpo_rows(tmp_path):
    good = {"prompt": "Pick a colour.", "chosen": "Blue.", "rejected": "No."}
    as_messages = {
        "prompt": [{"role": "user", "content": "Pick a colour."}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": {"role": "assistant", "content": "No."},
    }
    cases = [
        ({k: v for k, v in good.items() if k != "rejected"}, "missing field rejected"),
        ({"prompt": "x"}, "missing fields chosen, rejected"),
        ({**good, "chosen": ""}, "`chosen` is empty"),
        ({**good, "chosen": 3}, "`chosen` should be a string or a list of messages, got int"),
        ({**good, "prompt": []}, "`prompt` is empty"),
        ({**good, "prompt": " "}, "`prompt` is empty"),
        ({**good, "rejected": [{"role": "assistant"}]}, "`rejected[0].content` should be a string"),
    ]
    path = _write(
        tmp_path / "dpo.jsonl", [_line(good), _line(as_messages)] + [_line(r) for r, _ in cases]
    )
    rows, bad = load_rows(path, "pairs")
    assert rows == [good, as_messages]
    for n, (msg, (_, why)) in enumerate(zip(bad.skipped, cases, strict=True), 3):
        assert msg.startswith(f"{path}:{n}: ") and why in msg, (msg, why)


def test_preflight_reads_past_a_malformed_first_line(tmp_path):
    """The kind check looks at the first well-formed row (invalid UTF-8 used to crash it)."""
    path = _write(
        tmp_path / "dpo.jsonl",
        [b"\xff\xfe", _line({"prompt": "a", "chosen": "b", "rejected": "c"})],
    )
    with pytest.raises(ConfigError, match="lacks") as e:
        check_stage(
            compose_train(["model=tiny_debug", f"data.path={path}", "data.on_error=ignore"]),
            "train",
        )
    assert "data.on_error: 'ignore' is not one of 'skip', 'fail'" in str(e.value)


def test_training_skips_counts_and_lists_bad_rows_or_fails(tmp_path):
    rows = [_line(GOOD_SFT)] * 8 + [b"{torn", _line({"messages": []})] + [_line(GOOD_SFT)] * 8
    path = _write(tmp_path / "sft.jsonl", rows)
    extra = ["trainer.max_steps=2", "data.batch_size=4"]
    manifest = run_train(compose_train(tiny_overrides(tmp_path, path, "skip", *extra)))
    assert manifest["counts"]["skipped_malformed"] == 2
    assert manifest["counts"]["rows_kept"] == 16 and manifest["counts"]["rows"] == 18
    assert [s.removeprefix(f"{path}:")[:2] for s in manifest["skipped_rows"]] == ["9:", "10"]
    with pytest.raises(ConfigError, match=r"sft.jsonl:9: not valid JSON"):
        run_train(
            compose_train(tiny_overrides(tmp_path, path, "fail", *extra, "data.on_error=fail"))
        )
    assert not (tmp_path / "fail" / "train" / "manifest.json").exists()
