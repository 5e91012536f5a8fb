"""The model card's rules that need no training run: which licence and notice it names, and
that evaluate never edits a card matrix did not write."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard

from matrix.core.model_card import Score, TrainedModel, licence, record_eval_results, write_card

LLAMA_NOTICE = "Built with Meta Llama 3."


def model(base: Path, license: str | None = "llama3", notice: str | None = LLAMA_NOTICE):
    return TrainedModel(
        name="run/train",
        base_model=str(base),
        init="pretrained",
        license=license,
        license_notice=notice,
        data_file=str(base / "rows.jsonl"),
        data_counts={"rows": 2, "rows_kept": 2, "tokens": 10},
        settings={"objective": "SFT", "learning_rate": 1e-5},
    )


def base_with_card(tmp_path: Path, meta: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "README.md").write_text(f"---\n{meta}\n---\n# base\n")
    return tmp_path


def test_licence_comes_from_the_base_card_with_the_configured_notice_of_the_same_licence(
    tmp_path,
):
    # Meta's own card names the licence, not the notice its licence requires of derived models
    meta = base_with_card(tmp_path / "meta", "license: llama3")
    assert licence(model(meta)) == ("llama3", LLAMA_NOTICE)
    # a base card naming another licence wins, and the configured notice does not follow it
    other = base_with_card(tmp_path / "other", "license: mit")
    assert licence(model(other)) == ("mit", None)
    # an exported model's card passes its own notice on
    passed = base_with_card(tmp_path / "sft", "license: llama3\nlicense_notice: Passed on.")
    assert licence(model(passed, license=None, notice=None)) == ("llama3", "Passed on.")
    # no base card: the configured keys, else "other"
    assert licence(model(tmp_path / "none")) == ("llama3", LLAMA_NOTICE)
    assert licence(model(tmp_path / "none", license=None, notice=None)) == ("other", None)


def test_scores_go_only_on_cards_matrix_wrote(tmp_path):
    score = [Score("alpaca_eval2", "win_rate", 12.5, [10.0, 15.0], 8)]
    foreign = base_with_card(tmp_path / "downloaded", "license: mit")
    before = (foreign / "README.md").read_text()
    assert not record_eval_results(foreign, score, "judge", tmp_path / "evaluate")
    assert (foreign / "README.md").read_text() == before
    assert not record_eval_results(tmp_path / "no_card", score, "judge", tmp_path / "evaluate")

    ours = tmp_path / "hf_model"
    ours.mkdir()
    write_card(ours, model(tmp_path / "none"))
    assert record_eval_results(ours, score, "judge", tmp_path / "evaluate")
    card = ModelCard.load(ours / "README.md")
    (result,) = card.data.eval_results
    assert (result.metric_value, result.metric_args["ci95"]) == (12.5, [10.0, 15.0])
    assert "| alpaca_eval2 | win_rate | 12.5 | [10, 15] | 8 | judge |" in card.text
    assert LLAMA_NOTICE in card.text and card.data.license == "llama3"
