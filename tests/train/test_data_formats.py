"""Training reads the tables people have (matrix.common.tables): JSONL, JSON arrays, parquet, a
folder of such files, a folder from `datasets`' save_to_disk (a DatasetDict's split), a dataset
in the local Hugging Face datasets cache; `data.columns` maps other column names; anything else
stops naming the file and the formats accepted."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import datasets
import pytest

from matrix.common.io import read_jsonl
from matrix.common.validation import ConfigError
from matrix.train.examples import load_rows
from matrix.train.preflight import validate
from matrix.train.run import run_train
from tests.train.conftest import compose_train, tiny_overrides

STEPS = ["trainer.max_steps=2", "data.batch_size=4"]


def _dataset(jsonl: Path) -> datasets.Dataset:
    return datasets.Dataset.from_list(read_jsonl(jsonl))


def test_parquet_and_save_to_disk_give_the_rows_of_the_jsonl_file(tmp_path, data_dir):
    jsonl = data_dir / "sft.jsonl"
    expected, _ = load_rows(jsonl, "chat")
    ds = _dataset(jsonl)
    ds.to_parquet(tmp_path / "sft.parquet")
    ds.save_to_disk(tmp_path / "sft_disk")
    datasets.DatasetDict({"train": ds.select(range(4)), "test": ds}).save_to_disk(tmp_path / "dd")
    assert load_rows(tmp_path / "sft.parquet", "chat")[0] == expected
    assert load_rows(tmp_path / "sft_disk", "chat")[0] == expected
    assert load_rows(tmp_path / "dd", "chat", split="test")[0] == expected
    assert load_rows(tmp_path / "dd", "chat")[0] == expected[:4]  # no split named: train
    with pytest.raises(ConfigError, match=r"splits are train, test, no 'dev'.*data.split="):
        load_rows(tmp_path / "dd", "chat", split="dev")


def test_a_folder_of_data_files_and_a_json_array_give_the_rows_of_the_jsonl_file(
    tmp_path, data_dir
):
    """A folder as `huggingface-cli download --local-dir` leaves it: its data files in name
    order (a .jsonl.gz, a JSON array, a parquet file), its hidden `.cache/` passed over; a bad
    row is named by its file in the folder and its place (a line, or a row index from 0)."""
    jsonl = data_dir / "sft.jsonl"
    expected, _ = load_rows(jsonl, "chat")
    rows = read_jsonl(jsonl)
    folder = tmp_path / "download"
    (folder / "data").mkdir(parents=True)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "partial.jsonl").write_text('{"messages": "not a list"}\n')
    with gzip.open(folder / "data" / "a.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:3])
    (folder / "data" / "b.json").write_text(json.dumps(rows[3:6], indent=1))
    datasets.Dataset.from_list(rows[6:]).to_parquet(folder / "data" / "c.parquet")
    assert load_rows(folder, "chat", on_error="fail")[0] == expected
    assert load_rows(folder / "data" / "b.json", "chat")[0] == expected[3:6]

    (folder / "data" / "b.json").write_text(json.dumps([rows[3], {"messages": []}]))
    _, bad = load_rows(folder, "chat")
    assert bad.skipped == [f"{folder}:data/b.json:row 1: `messages` is empty"]
    (folder / "data" / "b.json").write_text("[" + json.dumps(rows[3]))
    with pytest.raises(ConfigError, match=r"b.json: not valid JSON"):
        load_rows(folder, "chat")


@pytest.mark.parametrize("fmt", ["parquet", "save_to_disk"])
def test_training_from_parquet_and_from_a_save_to_disk_folder(tmp_path, data_dir, fmt):
    ds = _dataset(data_dir / "sft.jsonl")
    if fmt == "parquet":
        path = tmp_path / "sft.parquet"
        ds.to_parquet(path)
    else:
        path = tmp_path / "sft_disk"
        ds.save_to_disk(path)
    manifest = run_train(compose_train(tiny_overrides(tmp_path, path, fmt, *STEPS)))
    assert manifest["counts"]["rows"] == 48 and manifest["counts"]["rows_kept"] == 48
    assert manifest["counts"]["steps"] == 2
    assert manifest["inputs"]["data"]["path"] == str(path)
    assert manifest["inputs"]["data"]["sha256"]  # a folder is hashed file by file
    assert (tmp_path / fmt / "train" / "hf_model" / "config.json").is_file()


def test_columns_map_other_names_and_a_missing_column_is_named_with_a_proposal(tmp_path, data_dir):
    rows = read_jsonl(data_dir / "sft.jsonl")
    renamed = datasets.Dataset.from_list([{"conversations": r["messages"]} for r in rows])
    renamed.to_parquet(tmp_path / "chats.parquet")
    path = tmp_path / "chats.parquet"
    got, _ = load_rows(path, "chat", columns={"messages": "conversations"})
    assert [r["messages"] for r in got] == [r["messages"] for r in rows]

    cfg = compose_train(["model=tiny_debug", f"data.path={path}", "data.columns.messages=convs"])
    with pytest.raises(ConfigError) as e:
        validate(cfg).raise_if_any("train")
    msg = str(e.value)
    assert "data.columns" in msg and "no column 'convs' (data.columns.messages)" in msg
    assert "the file's columns are: conversations" in msg
    assert "data.columns.messages=conversations" in msg


def test_a_dataset_in_the_local_hf_cache_is_read_by_name(tmp_path, data_dir, monkeypatch):
    """A cached hub dataset, laid out as `datasets` leaves one after `load_dataset('me/chats')`
    (`<cache>/me___chats/<config>/<version>/<hash>/` with `chats-<split>.arrow`), is read
    offline by its name."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    datasets.load_dataset("json", data_files=str(data_dir / "sft.jsonl"))
    built = next((tmp_path / "cache" / "json").glob("*/0.0.0/*[0-9a-f]"))
    cached = tmp_path / "cache" / "me___chats" / "default" / "0.0.0" / built.name
    shutil.copytree(built, cached)
    (cached / "json-train.arrow").rename(cached / "chats-train.arrow")

    expected, _ = load_rows(data_dir / "sft.jsonl", "chat")
    assert load_rows("me/chats", "chat")[0] == expected
    with pytest.raises(ConfigError, match=r"not a dataset in the local Hugging Face"):
        load_rows("me/other", "chat")


def test_a_wrong_format_names_the_file_and_the_formats_accepted(tmp_path):
    (tmp_path / "rows.txt").write_text("hello\n")
    (tmp_path / "folder").mkdir()
    for path, why in [
        (tmp_path / "rows.txt", "is not a format matrix reads"),
        (tmp_path / "folder", "is a folder but not one written by datasets' save_to_disk"),
    ]:
        cfg = compose_train(["model=tiny_debug", f"data.path={path}"])
        with pytest.raises(ConfigError) as e:
            validate(cfg).raise_if_any("train")
        assert f"data.path={path}" in str(e.value) and why in str(e.value)
        assert "a JSONL file (.jsonl, .jsonl.gz), a parquet file (.parquet)" in str(e.value)
