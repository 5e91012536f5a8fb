"""Published dataset formats (data.format): each shipped sample read through its converter, from
a file, a folder and parquet; a file in another format stops with the format it should have
been; the train stage trains on a sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from matrix.common.io import read_json, resolve_data_path
from matrix.common.validation import ConfigError
from matrix.core.config_check import check_stage
from matrix.train.formats import FORMATS
from matrix.train.run import run_train
from matrix.train.source_files import Source, sample_rows
from tests.train.conftest import compose_train, tiny_overrides

SAMPLES = resolve_data_path("matrix:data/samples")
# the shipped sample of each format, and the rows it holds that are trained on
SAMPLE = {
    "sharegpt": ("sharegpt.json", 3),
    "messages": ("messages.jsonl", 3),
    "wildchat": ("wildchat.jsonl", 2),
    "alpaca": ("alpaca.json", 3),
    "magpie": ("magpie.jsonl", 2),
    "preference": ("preference.jsonl", 3),
    "hh": ("hh.jsonl", 2),
    "safe_rlhf": ("safe_rlhf.jsonl", 2),
    "beavertails": ("beavertails.jsonl", 2),  # of 3: one is labelled unsafe
}


def source(fmt: str, **data) -> Source:
    return Source.from_data(OmegaConf.create({"format": fmt, "name": f"ds_{fmt}", **data}))


def test_every_format_has_a_shipped_sample() -> None:
    assert set(SAMPLE) == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(SAMPLE))
def test_sample_loads_through_its_format(fmt: str) -> None:
    name, n = SAMPLE[fmt]
    kinds = ["chat"] + (["pairs"] if FORMATS[fmt].rows == "pairs" else [])
    for kind in kinds:
        rows, bad = source(fmt).load(SAMPLES / name, kind, on_error="fail")
        assert len(rows) == n and not bad.skipped
        for row in rows:
            assert row["lineage"]["dataset"] == f"ds_{fmt}" and row["lineage"]["format"] == fmt
            assert row["id"] == f"ds_{fmt}-{row['lineage']['row_id']}"
        assert len({r["id"] for r in rows}) == n


def test_conversions_keep_the_published_meaning() -> None:
    sharegpt, _ = source("sharegpt").load(SAMPLES / "sharegpt.json", "chat")
    assert [m["role"] for m in sharegpt[0]["messages"]] == ["user", "assistant"] * 2
    assert sharegpt[0]["id"] == "ds_sharegpt-QWJhYvA_0"  # the dataset's own id
    assert sharegpt[1]["messages"][0] == {
        "role": "system",
        "content": "You are a concise assistant.",
    }
    alpaca, _ = source("alpaca").load(SAMPLES / "alpaca.json", "chat")
    published = read_json(SAMPLES / "alpaca.json")[1]
    assert alpaca[1]["messages"][0]["content"] == (
        f"{published['instruction']}\n\n{published['input']}"
    )
    pairs, _ = source("preference").load(SAMPLES / "preference.jsonl", "pairs")
    # UltraFeedback repeats the prompt in both lists: only the answers stay there
    assert [m["role"] for m in pairs[0]["prompt"]] == ["user"]
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "23 (29 is the other one)."}]
    assert [m["role"] for m in pairs[2]["prompt"]] == ["system", "user"]  # Orca: system, question
    hh, _ = source("hh").load(SAMPLES / "hh.jsonl", "pairs")
    assert [m["role"] for m in hh[1]["prompt"]] == ["user", "assistant", "user"]
    assert hh[1]["rejected"] == [{"role": "assistant", "content": "Take a few sleeping pills."}]
    safe, _ = source("safe_rlhf").load(SAMPLES / "safe_rlhf.jsonl", "pairs")
    assert "locksmith" in safe[0]["chosen"][0]["content"]  # safer_response_id 1
    sft_on_pairs, _ = source("hh").load(SAMPLES / "hh.jsonl", "chat")
    assert sft_on_pairs[1]["messages"] == [*hh[1]["prompt"], *hh[1]["chosen"]]


def test_columns_name_a_formats_keys(tmp_path: Path) -> None:
    rows = [{"question": "What does `git stash` do?", "answer": "It shelves your changes."}]
    path = tmp_path / "glaive.json"
    path.write_text(json.dumps(rows))
    src = source("alpaca", columns={"instruction": "question", "output": "answer"})
    out, _ = src.load(path, "chat")
    assert out[0]["messages"][1]["content"] == "It shelves your changes."
    with pytest.raises(ConfigError, match=r"`instruction` is missing"):
        source("alpaca").load(path, "chat")
    # the key data.columns replaced is refused, naming its replacement
    old = tiny_overrides(tmp_path, path, "old", "data=code_assistant", "+data.fields.output=answer")
    with pytest.raises(ConfigError, match=r"data.fields: unknown key; replaced by `data.columns"):
        check_stage(compose_train(old), "train")
    # a column of a key the format does not have is named before any model loads
    typo = tiny_overrides(tmp_path, path, "typo", "data=code_assistant", "+data.columns.ouput=a")
    with pytest.raises(ConfigError, match=r"data.columns.ouput: not a key of the alpaca format"):
        check_stage(compose_train(typo), "train")
    native = tiny_overrides(tmp_path, path, "native", "+data.columns.instruction=question")
    with pytest.raises(ConfigError, match=r"data.columns.instruction: not a field of data.format"):
        check_stage(compose_train(native), "train")


def test_a_format_read_from_a_save_to_disk_folder_and_a_cached_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A published format reads any table matrix.common.tables reads: the rows of a datasets
    folder (its split) and of a dataset in the local cache, by name, are the rows of the file
    they were made from."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    from_file, _ = source("hh").load(SAMPLES / "hh.jsonl", "pairs", on_error="fail")
    want = [(r["prompt"], r["chosen"], r["rejected"]) for r in from_file]
    built = datasets.load_dataset("json", data_files=str(SAMPLES / "hh.jsonl"))
    built.save_to_disk(str(tmp_path / "hh_disk"))
    from_disk, _ = source("hh").load(tmp_path / "hh_disk", "pairs", on_error="fail")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in from_disk] == want
    with pytest.raises(ConfigError, match=r"no 'test'; name one with data.split=<split>"):
        source("hh").load(tmp_path / "hh_disk", "pairs", split="test")
    arrow = next((tmp_path / "cache" / "json").glob("*/0.0.0/*[0-9a-f]"))
    cached = tmp_path / "cache" / "anthropic___hh" / "default" / "0.0.0" / arrow.name
    shutil.copytree(arrow, cached)
    (cached / "json-train.arrow").rename(cached / "hh-train.arrow")
    from_cache, _ = source("hh").load("anthropic/hh", "pairs", on_error="fail")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in from_cache] == want


def test_a_folder_and_parquet_read_as_the_same_rows(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    published = [json.loads(line) for line in (SAMPLES / "messages.jsonl").read_text().splitlines()]
    for row in published:
        row["id"] = str(row.get("id", row.get("prompt_id")))  # one column type per parquet column
    folder = tmp_path / "ultrachat"
    (folder / "data").mkdir(parents=True)
    (folder / ".cache").mkdir()  # what `huggingface-cli download --local-dir` leaves: passed over
    (folder / ".cache" / "x.jsonl").write_text("{}\n")
    (folder / "README.md").write_text("not data")
    pq.write_table(pa.Table.from_pylist(published[:2]), folder / "data" / "train-0.parquet")
    pq.write_table(pa.Table.from_pylist(published[2:]), folder / "data" / "train-1.parquet")
    from_folder, _ = source("messages").load(folder, "chat", on_error="fail")
    from_file, _ = source("messages").load(SAMPLES / "messages.jsonl", "chat", on_error="fail")
    assert [r["messages"] for r in from_folder] == [r["messages"] for r in from_file]
    assert from_folder[2]["lineage"]["file"].endswith("train-1.parquet")


def test_sample_draws_a_seeded_subset_in_file_order() -> None:
    rows, _ = source("sharegpt").load(SAMPLES / "sharegpt.json", "chat")
    a, b = sample_rows(rows, 2, seed=1), sample_rows(rows, 2, seed=1)
    assert len(a) == 2 and [r["id"] for r in a] == [r["id"] for r in b]
    assert [rows.index(r) for r in a] == sorted(rows.index(r) for r in a)
    assert sample_rows(rows, None, 1) == rows and sample_rows(rows, 5, 1) == rows
    assert len({tuple(r["id"] for r in sample_rows(rows, 2, s)) for s in range(20)}) > 1


def test_a_file_in_another_format_names_the_format_expected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        source("messages").load(SAMPLES / "sharegpt.json", "chat")
    msg = str(e.value)
    assert "not in the messages format (data.format=messages" in msg
    assert "sharegpt.json:row 0" in msg and "`messages` is missing" in msg
    assert "expected rows like" in msg and '"messages": [{"role"' in msg
    with pytest.raises(ConfigError, match=r"hh.jsonl:1: .*`conversations` is missing"):
        source("sharegpt").load(SAMPLES / "hh.jsonl", "chat")
    path = tmp_path / "roles.json"
    path.write_text(json.dumps([{"conversations": [{"from": "narrator", "value": "Once"}]}]))
    with pytest.raises(
        ConfigError, match=r"roles.json:row 0: .*`conversations\[0\].from` is 'narrator'"
    ):
        source("sharegpt").load(path, "chat")


def test_a_later_row_that_does_not_fit_is_skipped_or_fatal(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    lines = (SAMPLES / "wildchat.jsonl").read_text().splitlines()
    path.write_text("\n".join([lines[0], json.dumps({"conversation": "hi"}), lines[1]]) + "\n")
    rows, bad = source("wildchat").load(path, "chat", on_error="skip")
    assert len(rows) == 2 and len(bad.skipped) == 1
    assert "mixed.jsonl:2: `conversation` should be a list" in bad.skipped[0]
    with pytest.raises(ConfigError, match=r"mixed.jsonl:2: .*set data.on_error=skip"):
        source("wildchat").load(path, "chat", on_error="fail")


def test_preflight_names_the_format_before_any_model_loads(tmp_path: Path) -> None:
    overrides = tiny_overrides(tmp_path, SAMPLES / "alpaca.json", "wrong", "data=sharegpt")
    with pytest.raises(ConfigError) as e:
        check_stage(compose_train(overrides), "train")
    assert "data.format: " in str(e.value) and "not in the sharegpt format" in str(e.value)
    missing = tiny_overrides(tmp_path, tmp_path / "absent", "absent", "data=sharegpt")
    with pytest.raises(ConfigError, match=r"huggingface-cli download anon8231489123"):
        check_stage(compose_train(missing), "train")
    dpo_on_chats = tiny_overrides(tmp_path, SAMPLES / "alpaca.json", "c", "data=magicoder")
    with pytest.raises(ConfigError, match=r"holds conversations, not preference pairs"):
        check_stage(compose_train([*dpo_on_chats, "objective=dpo"]), "train")


@pytest.mark.parametrize(
    ("data", "path", "objective", "extra", "rows"),
    [
        ("sharegpt", "matrix:data/samples/sharegpt.json", "sft", [], 3),
        ("hh", "matrix:data/samples/hh.jsonl", "dpo", [], 2),
        ("sharegpt", "matrix:data/samples/sharegpt.json", "sft", ["data.sample=2"], 2),
        ("demo", "sft.jsonl", "sft", ["data.sample=5"], 5),  # the project's own rows
    ],
)
def test_train_stage_trains_on_a_published_sample(
    tmp_path: Path, data_dir: Path, data: str, path: str, objective: str, extra: list, rows: int
) -> None:
    if not path.startswith("matrix:"):
        path = str(data_dir / path)
    overrides = tiny_overrides(tmp_path, path, data, f"data={data}", f"objective={objective}")
    cfg = compose_train([*overrides, *extra, "data.on_error=fail", "trainer.max_epochs=1"])
    check_stage(cfg, "train")
    manifest = run_train(cfg)
    assert manifest["counts"]["rows_kept"] == rows
    assert manifest["inputs"]["data"]["path"] == str(resolve_data_path(path))
