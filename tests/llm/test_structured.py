import pytest
from omegaconf import OmegaConf

from matrix.llm.errors import StructuredOutputError
from matrix.llm.roles import Roles
from matrix.llm.structured import generate_structured, parse_int_list, parse_json
from tests.doubles import ScriptedBackend, chats_of


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('Sure! Here it is:\n```json\n{"a": [1, 2],}\n```\nHope this helps.', {"a": [1, 2]}),
        ("The answer is {'a': 'x', 'ok': True} as requested", {"a": "x", "ok": True}),
        ('noise {not json} then {"b": "}"} end', {"b": "}"}),
        ('[{"x": 1}, {"x": 2}]', [{"x": 1}, {"x": 2}]),
    ],
)
def test_parse_json_tolerates_messy_text(text, expected):
    assert parse_json(text) == expected


def test_parse_json_expect_type_and_failure():
    assert parse_json('[1] and {"k": 2}', expect=dict) == {"k": 2}
    with pytest.raises(StructuredOutputError) as e:
        parse_json("I cannot answer that.")
    assert e.value.text == "I cannot answer that."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[0, 2], because they discuss sports", [0, 2]),
        ("Agents: [3] only", [3]),
        ("[]", []),
        ("[1, 1, 4,]", [1, 4]),
        ("0, 2 - both relevant", [0, 2]),
        ("Answer: 1 and 3", [1, 3]),
    ],
)
def test_parse_int_list(text, expected):
    assert parse_int_list(text) == expected


def test_parse_int_list_rejects_no_list_and_out_of_range():
    with pytest.raises(StructuredOutputError):
        parse_int_list("none of them are relevant")
    with pytest.raises(StructuredOutputError, match=r"\[7\]"):
        parse_int_list("[1, 7]", valid=range(5))


def _judge(backend, tmp_path):
    cfg = OmegaConf.create(
        {
            "backends": {"b": {}},
            "roles": {"judge": {"backend": "b", "max_new_tokens": 16}},
            "cache": {"enabled": True, "dir": str(tmp_path)},
        }
    )
    return Roles(cfg, backends={"b": backend}).get("judge")


def test_one_repair_turn_then_typed_failure(tmp_path):
    def answer(chat, sampling):
        q = chat[0]["content"]
        repairing = len(chat) > 1
        if q == "good":
            return "[1, 2] fine"
        if q == "fixable":
            return "[3]" if repairing else "I think agent three"
        return "still no idea"

    backend = ScriptedBackend(answer)
    out = generate_structured(
        _judge(backend, tmp_path), chats_of("good", "fixable", "hopeless"), parse_int_list, "[i, j]"
    )
    assert out[0] == [1, 2] and out[1] == [3]
    assert isinstance(out[2], StructuredOutputError) and "row 2" in str(out[2])
    assert len(backend.batches) == 2 and len(backend.batches[1]) == 2  # one repair batch
    repair = backend.batches[1][0]
    assert repair[1] == {"role": "assistant", "content": "I think agent three"}
    assert "[i, j]" in repair[2]["content"]
    with pytest.raises(StructuredOutputError, match="row 0"):
        generate_structured(
            _judge(ScriptedBackend(answer), tmp_path / "x"),
            chats_of("hopeless"),
            parse_int_list,
            "[i, j]",
            strict=True,
        )
