"""Routing answers from a real served model: the simulate stage at debug=tiny scale against the
vLLM CPU server serving the embedded SmolLM2 (`llm=smollm2_server`, the `llm_server` fixture).

The server constrains decoding, so the modulator is asked for a JSON object under a schema
with a token budget sized from its group: no answer may be cut off by its budget, and
report.md shows each round's routing (asked, parsed, fallbacks by why). The same run the
way routing was asked before (lines, `structured_output=off`, under the role's own
`max_new_tokens`, `token_budget=role`) is counted the same way on the same server; its
numbers are logged beside the structured run's, for comparison, not asserted (they are the
model's).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from matrix.common.io import read_jsonl
from matrix.sim.run import run_simulate
from tests.conftest import compose

pytestmark = pytest.mark.server

log = logging.getLogger(__name__)
COLUMNS = "round asked made parsed retried fallbacks truncated unparseable missing structured"


def _simulate(tmp_path: Path, url: str, name: str, *extra: str) -> Path:
    cfg = compose(
        "simulate",
        [
            "debug=tiny",
            "llm=smollm2_server",
            f"llm.backends.server.base_url={url}",
            f"llm.cache.dir={tmp_path / 'llm_cache'}",
            f"paths.runs_dir={tmp_path / 'runs'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"run.name={name}",
            "logger=none",
            # a CPU server shared with other work answers a few tokens a second
            "llm.backends.server.timeout=900",
            *extra,
        ],
    )
    run_simulate(cfg)
    return tmp_path / "runs" / name / "simulate"


def routing_rows(report: Path) -> list[dict[str, int]]:
    """The rows of report.md's "Routing per round" table."""
    lines = report.read_text().splitlines()
    start = lines.index("## Routing per round")
    header = next(x for x in lines[start:] if x.startswith("| round |"))
    assert header.strip("| ").split(" | ") == COLUMNS.split()
    rows = []
    for line in lines[lines.index(header) + 2 :]:
        if not line.startswith("| "):
            break
        cells = [int(c) for c in line.strip("| ").split(" | ")]
        rows.append(dict(zip(COLUMNS.split(), cells, strict=True)))
    return rows


def _check_rounds(rows: list[dict[str, int]], events: list[dict]) -> None:
    assert [r["round"] for r in rows] == [1, 2, 3, 4]  # debug=tiny: 4 rounds
    for r in rows:
        assert r["asked"] > 0, r
        assert r["parsed"] + r["fallbacks"] == r["asked"], r
        assert r["truncated"] + r["unparseable"] + r["missing"] == r["fallbacks"], r
        assert r["parsed"] <= r["made"] <= r["asked"], r
    # the events' own record of fallbacks is what the counts say (news deliveries aside)
    own = sum(e["routing"] == "fallback" for e in events)
    assert own <= sum(r["fallbacks"] for r in rows)


def test_structured_routing_on_the_server_is_never_truncated(tmp_path, llm_server):
    out = _simulate(tmp_path, llm_server.base_url, "structured")
    rows = routing_rows(out / "report.md")
    log.warning("structured routing per round: %s", rows)
    _check_rounds(rows, read_jsonl(out / "events.jsonl"))
    for r in rows:
        assert r["structured"] == r["asked"], r  # the server constrains: every item by schema
        assert r["truncated"] == 0, r
    # a schema-constrained answer always has an entry for every item it was asked
    assert all(r["made"] == r["asked"] for r in rows), rows

    off = ("communication.structured_output=off", "communication.token_budget=role")
    lines = _simulate(tmp_path, llm_server.base_url, "lines", *off)
    rows = routing_rows(lines / "report.md")
    log.warning("line routing per round: %s", rows)
    _check_rounds(rows, read_jsonl(lines / "events.jsonl"))
    assert all(r["structured"] == 0 for r in rows), rows
