"""The run explorers (simulate/explorer.html, generate/explorer.html) in a real browser:
headless Chromium loads the generate page with a search, the row's lineage link leads into
the simulate page at the scenario, and the screenshot shows a drawn page. Skipped, with the
reason, where no Chromium is installed (CI installs it: .ci/run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest

from matrix.common.explorer import Section, render
from matrix.gen.explorer import write_gen_explorer
from matrix.gen.inputs import load_simulation
from matrix.sim.communication import Group
from matrix.sim.explorer import write_sim_explorer
from matrix.sim.schemas import Agent
from matrix.sim.state import SimState
from tests.doubles import read_rows, write_sim_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# `.ci/run` installs Chromium and sets MATRIX_REQUIRE_CHROMIUM=1: there a missing browser
# fails the test instead of skipping it.
REQUIRE_CHROMIUM = os.environ.get("MATRIX_REQUIRE_CHROMIUM") == "1"
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not REQUIRE_CHROMIUM,
    reason="no chromium on PATH (Debian: apt-get install -y chromium; CI installs it)",
)


class Dom(HTMLParser):
    """The dumped DOM: the text under each element id, and every link with its classes."""

    def __init__(self, html: str):
        super().__init__()
        self.text: dict[str, str] = {}
        self.links: list[tuple[str, str, str]] = []  # href, class, text
        self._open: list[tuple[str, str | None]] = []
        self._link: list | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("br", "input", "meta", "link", "img"):
            return
        self._open.append((tag, a.get("id")))
        if tag == "a":
            self._link = [a.get("href", ""), a.get("class", ""), ""]

    def handle_endtag(self, tag):
        while self._open:
            t, _ = self._open.pop()
            if t == tag:
                break
        if tag == "a" and self._link is not None:
            self.links.append(tuple(self._link))
            self._link = None

    def handle_data(self, data):
        for _, i in self._open:
            if i:
                self.text[i] = self.text.get(i, "") + data
        if self._link is not None:
            self._link[2] += data


def chromium(url: str, *flags: str) -> str:
    out = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
            *flags,
            url,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def write_run(base: Path) -> tuple[Path, Path]:
    """A simulate folder (6 agents, 2 groups, 2 rounds of events, 6 scenarios) and a generate
    folder beside it whose rows name their scenarios and agents, each with its explorer."""
    sim = write_sim_dir(base / "simulate")
    agents = [Agent.from_row(r) for r in read_rows(sim / "agents.jsonl")]
    groups = [Group(g, [a.index for a in agents if a.group == g], f"group {g}") for g in (0, 1)]
    events = [
        {
            "id": f"r{r:04d}-a{a.index:05d}",
            "round": r,
            "group": a.group,
            "agent": a.index,
            "agent_name": a.name,
            "action": f"{a.name} speaks in round {r}",
            "observers": [m for m in groups[a.group].members if m != a.index],
            "routing": "modulator" if a.index % 3 else "fallback",
            "routing_reason": "",
        }
        for r in (1, 2)
        for a in agents
    ]
    scenarios = read_rows(sim / "scenarios.jsonl")
    for s in scenarios:
        s["events"] = [e["id"] for e in events if e["agent"] in s["participants"]][:3]
    rounds = [{"round": r, "events": 6, "scenarios_total": 3 * r} for r in (1, 2)]
    state = SimState(round=2, agents=agents, groups=groups)
    write_sim_explorer(sim, state, "structured", scenarios, events, rounds)
    rows = [
        {
            "id": f"general-{k:06d}",
            "set": "general",
            "domain": "general",
            "messages": [
                {"role": "user", "content": f"Question {k} about the {topic}?"},
                {"role": "assistant", "content": f"An answer about the {topic}."},
            ],
            "lineage": {
                "generator": "sft_general",
                "scenario_ids": [scenarios[k]["id"]],
                "agent_ids": [agents[k].profile.id],
                "agent_names": [agents[k].name],
            },
        }
        for k, topic in enumerate(["garden", "bus", "garden", "budget", "garden", "rent"])
    ]
    gen = base / "generate"
    write_gen_explorer(gen, {"general": rows}, load_simulation(sim))
    return sim / "explorer.html", gen / "explorer.html"


def test_pages_embed_their_records_and_nothing_from_the_network(tmp_path):
    sim_page, gen_page = write_run(tmp_path)
    for page in (sim_page, gen_page):
        html = page.read_text()
        assert "http://" not in html and "https://" not in html and "<link" not in html
        data = json.loads(html.split('id="explorer-data">')[1].split("</script>")[0])
        assert all(s["rows"] for s in data["sections"])
    assert json.loads(gen_page.read_text().split('id="explorer-data">')[1].split("</script>")[0])[
        "external"
    ] == {"scenarios": "../simulate/explorer.html", "agents": "../simulate/explorer.html"}
    # a record's text cannot end the data script early
    record = Section("x", "X", "id", ["id"], [{"id": "</script><b>"}])
    page = render({"title": "t", "sections": [record.__dict__]})
    assert page.count("</script>") == 2


@needs_chromium
def test_search_then_lineage_into_the_simulate_page_in_headless_chromium(tmp_path):
    sim_page, gen_page = write_run(tmp_path)
    url = gen_page.as_uri() + "?q=garden#rows/general-000002"
    dom = Dom(chromium(url, "--dump-dom"))
    assert dom.text["count-rows"] == "3"  # the garden rows of six
    assert "general-000002" in dom.text["detail-title"]
    assert "Question 2 about the garden?" in dom.text["detail"]
    lineage = [(h, t) for h, c, t in dom.links if "lineage" in c]
    scenario = next(h for h, _ in lineage if "#scenarios/" in h)
    assert scenario == "../simulate/explorer.html#scenarios/s00002-g000"

    followed = urljoin(url, scenario)
    assert Path(unquote(urlsplit(followed).path)) == sim_page
    dom = Dom(chromium(followed, "--dump-dom"))
    assert dom.text["detail-title"] == "Scenario s00002-g000"
    summary = read_rows(sim_page.parent / "scenarios.jsonl")[2]["summary"]
    assert summary in dom.text["detail"]
    # its participants and events link to their own records, and back
    hrefs = {h for h, _, _ in dom.links}
    assert {"#agents/p002", "#agents/p003", "#agents/p004", "#groups/0"} <= hrefs
    assert any(h.startswith("#events/r0001-a0000") for h in hrefs)

    shot = tmp_path / "shot.png"
    chromium(followed, f"--screenshot={shot}", "--window-size=1200,900")
    from PIL import Image

    pixels = Image.open(shot).convert("RGB")
    colours = pixels.getcolors(maxcolors=1 << 20)
    top = max(n for n, _ in colours)
    # a drawn page: text in several colours (antialiased) and no single colour filling it
    assert len(colours) >= 64 and top < 0.9 * pixels.width * pixels.height
