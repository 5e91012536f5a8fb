import json
import os
import re
import subprocess
import sys

import pytest

from matrix.common.io import read_jsonl
from matrix.llm.roles import Roles
from matrix.sim.grouping import GroupingError, check_bounds, constrained_groups
from matrix.sim.population import load_profiles
from matrix.sim.profile_fields import ProfileError
from matrix.sim.pseudonyms import anonymize_rules
from matrix.sim.run import run_simulate
from tests.conftest import ROOT, compose
from tests.doubles import PromptHashLLM

FIELDS = {
    "id": "id",
    "name": "name",
    "handle": "username",
    "bio": "description",
    "persona": "user_char_clean",
    "topics": "topics",
    "posts": "previous_tweets",
}


def test_default_population_loads_1000_profiles():
    profiles, report = load_profiles("matrix:data/profiles/oasis_x_synthetic_1000.jsonl", FIELDS)
    assert len(profiles) == 1000 and not report.skipped
    assert all(p.persona for p in profiles)


def test_default_min_age_drops_stated_minors_and_counts_them():
    from omegaconf import OmegaConf

    from tests.conftest import CONF

    min_age = OmegaConf.load(f"{CONF}/population/default.yaml").min_age
    assert min_age == 18
    path = "matrix:data/profiles/oasis_x_synthetic_1000.jsonl"
    profiles, report = load_profiles(path, FIELDS, min_age=min_age)
    assert report.under_age > 0 and len(profiles) == 1000 - report.under_age
    # a persona states its own age first ("a 16-year-old student who ..."); later ages are
    # often someone else's ("... her 7-year-old son")
    first_ages = [re.search(r"(\d{1,2})-year-old", p.persona) for p in profiles]
    assert all(int(m.group(1)) >= min_age for m in first_ages if m)


def _write(tmp_path, lines):
    p = tmp_path / "profiles.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


def test_malformed_lines_are_reported_with_line_numbers_and_skipped(tmp_path):
    good = json.dumps(
        {"id": "a", "name": "Ann Lee", "user_char_clean": "A nurse.", "description": "hi"}
    ).encode()
    p = _write(
        tmp_path,
        [
            good,
            b"{not json",
            json.dumps({"id": "b", "user_char_clean": ""}).encode(),  # empty persona
            json.dumps({"id": "c", "user_char_clean": ["x"]}).encode(),  # wrong type
            b"\xff\xfe bad utf8",
            json.dumps({"id": "a", "user_char_clean": "dup"}).encode(),  # duplicate id
            json.dumps({"id": "d", "user_char_clean": "A chef who loves jazz."}).encode(),
        ],
    )
    profiles, report = load_profiles(str(p), FIELDS, on_error="skip")
    assert [x.id for x in profiles] == ["a", "d"]
    assert [s.split(":")[1] for s in report.skipped] == ["2", "3", "4", "5", "6"]
    with pytest.raises(ProfileError, match=r"profiles.jsonl:2: not valid JSON"):
        load_profiles(str(p), FIELDS, on_error="fail")


def test_a_huge_line_is_reported_and_the_rest_load(tmp_path):
    huge = json.dumps({"id": "h", "user_char_clean": "x" * 200_000}).encode()
    ok = json.dumps({"id": "d", "user_char_clean": "A chef who loves jazz."}).encode()
    p = _write(tmp_path, [huge, ok])
    profiles, report = load_profiles(str(p), FIELDS, max_line_bytes=100_000)
    assert [x.id for x in profiles] == ["d"]
    assert report.skipped == (f"{p}:1: line of {len(huge) + 1} bytes is over the limit of 100000",)


def test_csv_with_field_mapping(tmp_path):
    p = tmp_path / "people.csv"
    p.write_text(
        "uid,full_name,about,interests\n1,Bo Chan,Retired teacher who paints.,\"['Art', 'Health']\"\n"
    )
    profiles, _ = load_profiles(
        str(p), {"id": "uid", "name": "full_name", "persona": "about", "topics": "interests"}
    )
    assert profiles[0].name == "Bo Chan" and profiles[0].topics == ("Art", "Health")


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="population.path"):
        load_profiles(str(tmp_path / "nope.jsonl"), FIELDS)


def test_rule_anonymization_removes_name_and_handle():
    profiles, _ = load_profiles("matrix:data/profiles/oasis_x_synthetic_1000.jsonl", FIELDS)
    sample = profiles[:50]
    anon = anonymize_rules(sample, seed=0)
    for before, after in zip(sample, anon, strict=True):
        assert before.name not in after.persona
        assert before.handle == "" or before.handle.lower() not in after.persona.lower()
        assert after.name != before.name


def test_grouping_respects_size_bounds():
    import numpy as np

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(60, 16)).astype("float32")
    labels = constrained_groups(vecs, k=12, size_min=2, size_max=7, seed=0)
    sizes = np.bincount(labels, minlength=12)
    assert len(sizes) == 12 and sizes.min() >= 2 and sizes.max() <= 7 and sizes.sum() == 60


def test_small_population_with_the_paper_bounds_groups():
    """population=tiny (8 agents) with the default bounds 1-10 and k=auto (2 groups): a bound
    above the population size is no constraint, not an error."""
    import numpy as np

    vecs = np.random.default_rng(1).normal(size=(8, 16)).astype("float32")
    labels = constrained_groups(vecs, k=2, size_min=1, size_max=10, seed=0)
    sizes = np.bincount(labels, minlength=2)
    assert len(sizes) == 2 and sizes.min() >= 1 and sizes.sum() == 8


@pytest.mark.parametrize(
    ("n", "k", "lo", "hi", "msg"),
    [
        (10, 0, 1, 10, "communication.k=0"),
        (10, 6, 2, 10, "needs 12 agents"),
        (100, 5, 1, 10, "holds only 50"),
        (10, 2, 5, 3, "size_max=3 < size_min=5"),
    ],
)
def test_impossible_bounds_are_refused_with_the_fix(n, k, lo, hi, msg):
    with pytest.raises(GroupingError, match=msg):
        check_bounds(n, k, lo, hi)


# --- a file whose columns do not match population.fields --------------------------------------


def _bio_posts_jsonl(tmp_path, n=10):
    p = tmp_path / "people.jsonl"
    rows = [
        {"id": f"u{i}", "bio": f"Nurse {i} who hikes on weekends.", "posts": [f"p{i}a", f"p{i}b"]}
        for i in range(n)
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _tweets_csv(tmp_path, n=10):
    p = tmp_path / "people.csv"
    lines = ["user,description,recent_tweets"]
    lines += [f"user{i},Teacher {i} who paints.,tweet {i}; another {i}" for i in range(n)]
    p.write_text("\n".join(lines) + "\n")
    return p


def _proposed(message: str) -> dict:
    """The field map an error proposes (`Map them with: population.fields.x=y ...`)."""
    fix = message.split("Map them with: ", 1)[1].split(" (", 1)[0]
    pairs = [o.removeprefix("population.fields.").split("=", 1) for o in fix.split()]
    return {k: (None if v == "null" else v) for k, v in pairs}


@pytest.mark.parametrize(
    ("make", "columns", "expected"),
    [
        (
            _bio_posts_jsonl,
            "id, bio, posts",
            {"bio": "bio", "persona": "bio", "posts": "posts", "name": None, "handle": None},
        ),
        (
            _tweets_csv,
            "user, description, recent_tweets",
            {"id": "user", "persona": "description", "posts": "recent_tweets", "name": None},
        ),
    ],
)
def test_unmatched_columns_are_listed_with_a_proposed_map(
    tmp_path, caplog, make, columns, expected
):
    path = make(tmp_path)
    with pytest.raises(ProfileError) as err:
        load_profiles(str(path), FIELDS)
    message = str(err.value)
    assert f"the file's columns are: {columns}." in message
    proposal = _proposed(message)
    assert {k: proposal[k] for k in expected} == expected
    assert not [r for r in caplog.records if "skipping" in r.getMessage()]  # no per-line noise
    # the proposed map, as given on the command line, loads every profile
    profiles, report = load_profiles(str(path), {**FIELDS, **proposal})
    assert len(profiles) == 10 and not report.skipped
    assert all(p.persona and p.posts for p in profiles)


def test_a_profile_with_a_bio_and_no_persona_uses_the_bio(tmp_path):
    p = _write(
        tmp_path,
        [
            json.dumps({"id": "a", "description": "Retired chef.", "user_char_clean": ""}).encode(),
            json.dumps(
                {"id": "b", "description": "Pilot.", "user_char_clean": "A pilot, 40."}
            ).encode(),
            json.dumps({"id": "c", "description": "", "user_char_clean": ""}).encode(),
        ],
    )
    profiles, report = load_profiles(
        str(p), {"id": "id", "bio": "description", "persona": "user_char_clean"}
    )
    assert [(x.id, x.persona) for x in profiles] == [("a", "Retired chef."), ("b", "A pilot, 40.")]
    assert report.skipped == (
        f"{p}:3: missing or empty: persona (column 'user_char_clean') and bio (column 'description')",
    )


def test_an_absent_optional_column_is_reported_and_left_empty(tmp_path, caplog):
    p = _write(tmp_path, [json.dumps({"id": "a", "user_char_clean": "A nurse."}).encode()])
    profiles, _ = load_profiles(str(p), FIELDS)
    assert profiles[0].persona == "A nurse." and profiles[0].posts == ()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'previous_tweets' (population.fields.posts)" in warned
    assert "population.fields.posts=null" in warned


def test_the_simulate_stage_refuses_the_file_before_it_starts_and_runs_with_the_map(tmp_path):
    """Through simulate.py: exit 2 naming the columns and the map; then run_simulate with the
    proposed overrides (LLM double) simulates the file's people."""
    path = _tweets_csv(tmp_path)
    base = ["debug=tiny", f"paths.runs_dir={tmp_path}/runs", f"population.path={path}"]
    out = subprocess.run(
        [sys.executable, str(ROOT / "simulate.py"), *base, "logger=none"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "MATRIX_NO_PROGRESS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "population.fields" in out.stderr and "user, description, recent_tweets" in out.stderr
    assert "skipping" not in out.stderr
    assert not list((tmp_path / "runs").rglob("manifest.json"))
    fix = out.stderr.split("Map them with: ", 1)[1].split(" (", 1)[0].split()
    cfg = compose("simulate", [*base, "logger=none", f"paths.cache_dir={tmp_path}/c", *fix])
    run_simulate(cfg, Roles(cfg.llm, {"smollm2": PromptHashLLM()}))
    agents = read_jsonl(tmp_path / "runs" / "tiny" / "simulate" / "agents.jsonl")
    assert len(agents) == 8  # population=tiny samples 8 of the file's 10
    for a in agents:
        i = a["profile"]["id"].removeprefix("user")
        assert a["profile"]["persona"] == f"Teacher {i} who paints."
        assert a["profile"]["posts"] == [f"tweet {i}", f"another {i}"]


def test_a_csv_saved_with_a_byte_order_mark_keeps_its_first_column(tmp_path):
    """Spreadsheet programs write UTF-8 CSVs with a BOM; it must not rename the `id` column."""
    p = tmp_path / "excel.csv"
    p.write_bytes("id,user_char_clean\n1,A retired teacher.\n".encode("utf-8-sig"))
    profiles, _ = load_profiles(str(p), {"id": "id", "persona": "user_char_clean"})
    assert [(x.id, x.persona) for x in profiles] == [("1", "A retired teacher.")]
