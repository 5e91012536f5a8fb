"""A run's explorer: one static, self-contained HTML file (no server, no network) that
shows a stage's records as searchable, filterable tables, each record on its own anchor
(`explorer.html#<section>/<id>`) with links along its references and back.

A stage hands `write_explorer` its sections; a section is a list of JSON-able records with
the field that names each one (`key`), the fields shown in its table (`columns`), the fields
offered as filters, and the fields that hold ids of another section's records (`links`).
`external` maps a section held by another explorer file to that file's relative path
(generated rows link to their scenarios and agents in the simulate explorer this way).
The page's script and style (explorer.js, explorer.css beside this module) are inlined.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matrix.common.io import atomic_write_text

ASSETS = Path(__file__).parent
EXPLORER_FILE = "explorer.html"


@dataclass
class Section:
    name: str  # the anchor's first part: letters, digits, underscores
    title: str
    key: str
    columns: list[str]
    rows: list[dict[str, Any]]
    filters: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)  # field -> section name
    description: str = ""


def write_explorer(
    path: Path,
    title: str,
    sections: list[Section],
    subtitle: str = "",
    external: dict[str, str] | None = None,
) -> Path:
    """Write the explorer page to `path` (atomically); returns `path`."""
    data = {
        "title": title,
        "subtitle": subtitle,
        "sections": [asdict(s) for s in sections],
        "external": external or {},
    }
    atomic_write_text(Path(path), render(data))
    return Path(path)


def render(data: dict) -> str:
    # "</" would end the script element early; "<\/" is the same JSON string.
    payload = json.dumps(data, ensure_ascii=False, default=str).replace("</", "<\\/")
    style = (ASSETS / "explorer.css").read_text()
    script = (ASSETS / "explorer.js").read_text().replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_escape(data["title"])}</title>
<style>
{style}</style>
</head>
<body>
<header>
<h1 id="title"></h1>
<p id="subtitle"></p>
<input id="search" type="search" placeholder="search every record (ids, names, text)" autofocus>
<nav id="nav"></nav>
</header>
<main>
<div id="detail" hidden></div>
<div id="sections"></div>
</main>
<script type="application/json" id="explorer-data">{payload}</script>
<script>
{script}</script>
</body>
</html>
"""


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
