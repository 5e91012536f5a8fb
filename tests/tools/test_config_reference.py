"""docs/config.md is generated from conf/ (`python -m tools.config_reference`) and never
drifts from it: the committed page must equal a fresh render."""

from __future__ import annotations

import pytest

from tools import config_reference
from tools.config_reference import (
    COMMAND,
    changes,
    read_comments,
    render,
    show,
    show_leaf,
    stale_message,
)


@pytest.fixture(scope="module")
def page() -> str:
    return render()


def test_committed_page_is_current(page: str) -> None:
    message = stale_message(page)
    assert message is None, message


def test_page_documents_known_keys_groups_and_presets(page: str) -> None:
    rows = {ln.split(" | ")[0]: ln for ln in page.splitlines() if ln.startswith("| ")}
    # A key with its default and its inline comment, and one with a block comment above it.
    assert "`auto`" in rows["| `communication.k`"]
    assert "number of groups" in rows["| `communication.k`"]
    assert "`null`" in rows["| `llm.budget.max_tokens`"]
    assert "BudgetExhausted" in rows["| `llm.budget`"]
    # Group options with their header comment and what they change.
    assert "### `communication=`" in page
    assert "Ablation (the paper's Table 8): no communication" in page
    assert "Sets `_target_=matrix.sim.communication.RandomCommunication`." in page
    assert "Sets `roles.*.backend=api`" in page
    # Experiment presets as a table row with the header's first sentence.
    preset = rows["| [`paper_sft_10k`](../conf/experiment/paper_sft_10k.yaml)"]
    assert "Table 10 (simple instructions), MATRIX-Gen-SFT 10K on Llama-3-8B base." in preset
    assert "Full scale" not in preset
    # Nothing machine-specific.
    assert str(config_reference.ROOT) not in page


def test_stale_or_missing_page_names_the_command(tmp_path, page: str) -> None:
    doc = tmp_path / "config.md"
    expected = f"config.md is out of date: run {COMMAND}"
    assert expected in stale_message(page, doc)  # missing
    doc.write_text(page.replace("communication.k", "communication.kk"))
    assert expected in stale_message(page, doc)
    doc.write_text(page)
    assert stale_message(page, doc) is None


def test_check_exits_nonzero_on_a_stale_page(tmp_path, monkeypatch, capsys, page: str) -> None:
    doc = tmp_path / "config.md"
    doc.write_text(page + "\nedited by hand\n")
    monkeypatch.setattr(config_reference, "DOC", doc)
    monkeypatch.setattr(config_reference, "render", lambda: page)
    assert config_reference.main(["--check"]) == 1
    assert f"out of date: run {COMMAND}" in capsys.readouterr().err
    assert config_reference.main([]) == 0
    assert doc.read_text() == page
    assert config_reference.main(["--check"]) == 0


def test_secret_values_are_never_shown() -> None:
    assert show_leaf("llm.backends.api.api_key", "sk-live-123") == "***"
    assert show_leaf("api_key", "${oc.env:OPENAI_API_KEY}") == "${oc.env:OPENAI_API_KEY}"
    assert show_leaf("api_key", None) == "null"
    # The *name* of the environment variable is not a secret.
    assert show_leaf("api_key_env", "OPENAI_API_KEY") == "OPENAI_API_KEY"
    assert "sk-live" not in show({"model": "m", "api_key": "sk-live-123"})
    added = changes({}, {"backends": {"api": {"token": "sk-live-123"}}}, replaces=False)
    assert "sk-live" not in added


def test_changes_sets_adds_removes_and_collapses() -> None:
    default = {"mode": "a", "roles": {r: {"backend": "x"} for r in "pqr"}, "gone": {"k": 1}}
    option = {"mode": "b", "roles": {r: {"backend": "y"} for r in "pqr"}, "new": {"k": 2}}
    assert changes(default, option, replaces=True) == (
        "Sets `mode=b`, `roles.*.backend=y`; adds `new={k: 2}`; removes `gone`."
    )
    assert changes(default, default, replaces=True) == ""


def test_comment_reader() -> None:
    text = """\
# @package _global_
# What this file is.
#   python run.py   # a command in the header

top: 1  # inline
# above a block
block:
  # above a key
  quoted: "a # not a comment"  # the comment
  prompt: |-
    # a line of text, not a comment
    more: text
  after: 2
flow: {a: 1, b: 2}  # shared by a and b
seq:
  - "x"   # an item, not a key
defaults_like: ok
"""
    c = read_comments(text)
    assert c.package == "_global_"
    assert c.header == ("What this file is.", "  python run.py   # a command in the header")
    assert c.keys == {
        "top": "inline",
        "block": "above a block",
        "block.quoted": "above a key the comment",
        "flow": "shared by a and b",
    }
    assert "block.more" not in c.keys and "block.after" not in c.keys
    assert config_reference.comment_for(c, "flow.b") == "shared by a and b"
    assert config_reference.first_sentence(c.header) == "What this file is."
