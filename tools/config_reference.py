"""The config reference, docs/config.md, generated from the config tree under conf/.

    python -m tools.config_reference           # (re)write docs/config.md
    python -m tools.config_reference --check   # exit 1 when docs/config.md differs from conf/

The page has four parts: the top-level files, every config group with its options (each
option's header comment and what choosing it changes against the default config), the
experiment presets, and every key of the default config (`pipeline` composed with no
overrides) with its default value and the comment that documents it.

Comments are not part of YAML's data model and ruamel.yaml is not a dependency, so
`read_comments` is a small line reader that knows just the YAML this tree uses: block
mappings, one-line flow collections, block scalars (`|-`, `>-`) and sequences (skipped).
Values come from Hydra, so inheritance (`defaults:`) is Hydra's own. They are shown
unresolved (`${run.name}`), so nothing machine-specific reaches the page; `_scrub` replaces
the repository root and the home directory anyway, and keys that look like secrets never
show a value. The same conf/ gives the same bytes: no timestamps, a fixed order.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from matrix.common.schema import describe
from matrix.common.secrets import is_secret_key
from matrix.core.value_check import key_type

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
DOC = ROOT / "docs" / "config.md"
COMMAND = "python -m tools.config_reference"
# Groups whose options are whole-loop presets: a table, not a section per option.
PRESET_GROUP = "experiment"
# Groups configured for a Hydra plugin; their options cannot be composed without the plugin.
HYDRA_GROUP_PREFIX = "hydra/"
VALUE_CHARS = 60  # longer values are cut (prompts); the YAML file has the whole text


# --- comments ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FileComments:
    """What a YAML file says about itself in comments."""

    header: tuple[str, ...]  # leading comment lines, "# " stripped, `@package` line dropped
    package: str | None  # the `# @package` directive, if any
    keys: dict[str, str]  # dotted key (relative to the file's package) -> its comment
    flow: frozenset[str]  # keys written as one-line {...} / [...]: children share the comment


_KEY_LINE = re.compile(
    r"""^(?P<indent> *)(?P<key>[A-Za-z_][\w\-]*|"[^"]*"|'[^']*') *:(?= |$)(?P<rest>.*)$"""
)
_BLOCK_SCALAR = re.compile(r"^[|>][-+0-9]*$")


def split_comment(rest: str) -> tuple[str, str]:
    """`value  # comment` -> (value, comment). A `#` starts a comment outside quotes when it
    follows a space (YAML's rule); a quote opens a string only where a scalar can start."""
    quote = ""
    prev = " "  # the last non-space character outside a string (" " at the start)
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = ""
                prev = ch
        elif ch in "\"'" and prev in " [{,:":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].strip(), rest[i + 1 :].strip()
        elif ch not in " \t":
            prev = ch
    return rest.strip(), ""


def _uncomment(line: str) -> str:
    """`# text` -> `text`, keeping any further indentation (code in headers)."""
    text = line.strip()[1:]
    return text[1:] if text.startswith(" ") else text


def read_comments(text: str) -> FileComments:
    lines = text.splitlines()
    header: list[str] = []
    package = None
    i = 0
    while i < len(lines) and lines[i].lstrip().startswith("#"):
        body = _uncomment(lines[i])
        if body.startswith("@package"):
            package = body.split(None, 1)[1].strip() if " " in body else ""
        else:
            header.append(body.rstrip())
        i += 1

    keys: dict[str, str] = {}
    flow: set[str] = set()
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings the line is inside
    pending: list[str] = []  # comment lines right above the current line
    while i < len(lines):
        line = lines[i]
        i += 1
        stripped = line.strip()
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            pending.append(_uncomment(line).strip())
            continue
        m = _KEY_LINE.match(line)
        if not m:  # a sequence item (`- ...`): not a key
            pending = []
            continue
        indent, key = len(m["indent"]), m["key"].strip("\"'")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(k for _, k in stack), key])
        stack.append((indent, key))
        value, inline = split_comment(m["rest"])
        comment = " ".join([*pending, inline]).strip()
        pending = []
        if path != "defaults" and not path.startswith("defaults."):
            if comment:
                keys[path] = comment
            if value.startswith(("[", "{")):
                flow.add(path)
        if _BLOCK_SCALAR.match(value):  # the text below belongs to the value
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip(" ")) > indent
            ):
                i += 1
    return FileComments(tuple(header), package, keys, frozenset(flow))


def comment_for(comments: FileComments, key: str) -> str:
    """A key's own comment, or that of the one-line {...} it is written in."""
    if key in comments.keys:
        return comments.keys[key]
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:n])
        if parent in comments.flow:
            return comments.keys.get(parent, "")
    return ""


def header_blocks(header: tuple[str, ...]) -> list[tuple[str, str]]:
    """A header as ("text", paragraph) and ("code", lines) blocks. A line is code when it
    starts a command or is indented (unless it is the hanging indent of an unfinished
    sentence)."""
    blocks: list[tuple[str, str]] = []
    para: list[str] = []
    code: list[str] = []

    def flush() -> None:
        if para:
            blocks.append(("text", " ".join(para)))
            para.clear()
        if code:
            blocks.append(("code", textwrap.dedent("\n".join(code))))
            code.clear()

    for line in header:
        command = line.startswith(("python ", "srun ", "export "))
        # An indented line right after an unfinished sentence is that sentence's hanging indent.
        hanging = para and not para[-1].endswith((".", ":", "!", "?"))
        if not line.strip():
            flush()
        elif command or (line.startswith("  ") and not hanging):
            if para:
                flush()
            code.append(line)
        else:
            if code:
                flush()
            para.append(line.strip())
    flush()
    return blocks


def first_sentence(header: tuple[str, ...]) -> str:
    text = next((b for kind, b in header_blocks(header) if kind == "text"), "")
    m = re.match(r"(.+?[.!?])(?=\s+[A-Z`(]|\s*$)", text)
    return m.group(1) if m else text


# --- values -----------------------------------------------------------------------------


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _items(open_: str, items: list[str], close: str, limit: int) -> str:
    """A flow collection of as many whole items as fit in `limit` characters."""
    shown: list[str] = []
    for item in items:
        if shown and len(open_ + ", ".join([*shown, item, "…"]) + close) > limit:
            return open_ + ", ".join([*shown, "…"]) + close
        shown.append(item)
    return open_ + ", ".join(shown) + close


def show(value: Any, limit: int = VALUE_CHARS, nested: bool = False) -> str:
    """A value as YAML would write it, on one line. Text with spaces (prompts, commands) is
    cut to `limit` characters; a path or an interpolation is shown whole."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        items = [f"{k}: {show_leaf(str(k), v, limit, nested=True)}" for k, v in value.items()]
        return _cut(_items("{", items, "}", limit), limit)
    if isinstance(value, list):
        items = [show(v, limit, nested=True) for v in value]
        return _cut(_items("[", items, "]", limit), limit)
    if not isinstance(value, str):
        return str(value)
    text = value.strip()
    lines = text.splitlines()
    if nested and (not text or re.search(r"[,:#{}\[\]]|^[\"'&*!|>%@`]", text)):
        text = json.dumps(text)  # inside {...} / [...] it must read as one item
    elif len(lines) > 1:
        text = lines[0] + " …"
    elif not text:
        text = '""'
    return _cut(text, limit) if " " in text else text


def show_leaf(key: str, value: Any, limit: int = VALUE_CHARS, nested: bool = False) -> str:
    """`show`, except that a secret-looking key never shows a literal value: only null or an
    interpolation such as ${oc.env:OPENAI_API_KEY} (a reference, not the secret)."""
    leaf = key.rsplit(".", 1)[-1]
    if is_secret_key(leaf) and value not in (None, "") and not str(value).startswith("${"):
        return "***"
    return show(value, limit, nested)


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf in file order; lists and empty maps are leaves."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, node


def _node(tree: Any, key: str) -> Any:
    for part in key.split(".") if key else []:
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


_MISSING = object()


def changes(default: dict, option: dict, replaces: bool) -> str:
    """What choosing `option` changes in `default` (plain dicts of the same package), as one
    sentence: the leaves it sets to another value (`key=value`), the blocks it adds, and, when
    it replaces the group's whole tree (`replaces`), the blocks it removes. A key set the
    same way under every entry of a map collapses to `map.*.key=value`."""
    sets: list[tuple[str, str]] = []
    adds: list[str] = []
    for key, value in leaves(option):
        parts = key.split(".")
        # The topmost ancestor the default lacks (or holds as a plain value) is a new block.
        block = next(
            (
                ".".join(parts[:n])
                for n in range(1, len(parts))
                if not isinstance(_node(default, ".".join(parts[:n])), dict)
            ),
            None,
        )
        if block is not None:
            added = f"{block}={show_leaf(block, _node(option, block))}"
            if added not in adds:
                adds.append(added)
        elif _node(default, key) is _MISSING:
            adds.append(f"{key}={show_leaf(key, value)}")
        elif _node(default, key) != value:
            sets.append((key, show_leaf(key, value)))
    removes: list[str] = []
    if replaces:
        for key, _ in leaves(default):
            parts = key.split(".")
            gone = next(
                (
                    ".".join(parts[:n])
                    for n in range(1, len(parts) + 1)
                    if _node(option, ".".join(parts[:n])) is _MISSING
                ),
                None,
            )
            if gone is not None and gone not in removes:
                removes.append(gone)
    clauses = [
        (verb, items)
        for verb, items in (
            ("sets", [f"{k}={v}" for k, v in _collapse(sets, option)]),
            ("adds", adds),
            ("removes", removes),
        )
        if items
    ]
    text = "; ".join(f"{verb} " + ", ".join(code(i) for i in items) for verb, items in clauses)
    return text[:1].upper() + text[1:] + "." if text else ""


def _collapse(items: list[tuple[str, str]], option: dict) -> list[tuple[str, str]]:
    """`m.a.k=v`, `m.b.k=v`, `m.c.k=v` -> `m.*.k=v` when a, b, c are all of map m's entries."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for key, value in items:
        parts = key.split(".")
        if len(parts) >= 3:
            groups.setdefault((".".join(parts[:-2]), parts[-1], value), []).append(parts[-2])
    out: list[tuple[str, str]] = []
    done: set[tuple[str, str, str]] = set()
    for key, value in items:
        parts = key.split(".")
        sig = (".".join(parts[:-2]), parts[-1], value) if len(parts) >= 3 else None
        entries = _node(option, sig[0]) if sig else None
        if (
            sig
            and isinstance(entries, dict)
            and len(entries) >= 3
            and sorted(groups[sig]) == sorted(entries)
        ):
            if sig not in done:
                done.add(sig)
                out.append((f"{sig[0]}.*.{sig[1]}", value))
        else:
            out.append((key, value))
    return out


# --- markdown ---------------------------------------------------------------------------


def code(text: str) -> str:
    """An inline code span that survives backticks in `text`."""
    longest = max((len(r) for r in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def prose(text: str) -> str:
    """Comment text as Markdown: `<stage dir>` outside code spans would be an HTML tag."""
    parts = re.split(r"(`+[^`]*`+)", text)
    return "".join(p if p.startswith("`") else p.replace("<", "&lt;") for p in parts)


def row(*cells: str) -> str:
    """A table row. GitHub splits cells at every unescaped `|`, inside code spans too."""
    return "| " + " | ".join(c.replace("\n", " ").replace("|", "\\|") for c in cells) + " |"


def _link(rel: str) -> str:
    return f"[{rel}](../{rel})"


def _header_markdown(header: tuple[str, ...], indent: str = "") -> list[str]:
    out: list[str] = []
    for kind, block in header_blocks(header):
        if out:
            out.append("")
        if kind == "text":
            out.append(indent + prose(block))
        else:
            out += [indent + "```bash", *(indent + ln for ln in block.splitlines()), indent + "```"]
    return out


# --- the tree ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One file of the default composition, in merge order."""

    rel: str  # path under conf/, e.g. "population/default.yaml"
    package: str  # where its keys land ("" = the root)
    comments: FileComments


def _groups(conf_dir: Path) -> dict[str, list[str]]:
    """group path -> its options (file stems), both sorted."""
    out: dict[str, list[str]] = {}
    for f in sorted(conf_dir.rglob("*.yaml")):
        rel = f.relative_to(conf_dir)
        if len(rel.parts) > 1:
            out.setdefault("/".join(rel.parts[:-1]), []).append(rel.stem)
    return out


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _compose(config_name: str) -> dict:
    from hydra import compose

    with warnings.catch_warnings():
        # A group file composed on its own warns that its defaults lack `_self_`; Hydra
        # appends it at the end either way, as it does inside the pipeline.
        warnings.simplefilter("ignore", UserWarning)
        cfg = compose(config_name)
    return OmegaConf.to_container(cfg, resolve=False)


def _default_sources(conf_dir: Path) -> list[Source]:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    loader = GlobalHydra.instance().config_loader()
    out = []
    for d in loader.compute_defaults_list("pipeline", [], RunMode.RUN).defaults:
        if d.config_path is None or d.package == "hydra" or d.package.startswith("hydra."):
            continue
        f = conf_dir / f"{d.config_path}.yaml"
        out.append(Source(f"{d.config_path}.yaml", d.package, read_comments(_read(f))))
    return out


def _package(group: str, comments: FileComments) -> str:
    if comments.package is not None:
        return "" if comments.package == "_global_" else comments.package
    return group.replace("/", ".")


def _defaults_of(path: Path) -> tuple[list[str], list[str]]:
    """(configs it builds on, `group=option` overrides) from a file's defaults list."""
    data = yaml.safe_load(_read(path)) or {}
    bases, overrides = [], []
    for d in data.get("defaults", []):
        if isinstance(d, str) and d != "_self_":
            bases.append(d)
        elif isinstance(d, dict):
            for k, v in d.items():
                if str(k).startswith("override "):
                    overrides.append(f"{str(k).split(' ', 1)[1].lstrip('/')}={v}")
                else:
                    bases.append(f"{k}: {v}")
    return bases, overrides


# --- the page ---------------------------------------------------------------------------

INTRO = """\
# Config reference

Generated from `conf/` by `{command}` (`make config-doc`); do not edit it by hand.
A test fails when this page and `conf/` disagree.

Every script composes one config tree, `conf/pipeline.yaml`. `group=option` on the command
line picks another file of a group (`python train.py model=llama3_8b`); `key=value` sets one
key (`python train.py optimizer.lr=1e-4`); `--cfg job` prints the composed config. Values are
shown as written, before interpolation (`${{run.name}}`); `???` means required, no default.
Long values (prompts) are cut: the YAML file has the whole text.

- [Top-level files](#top-level-files)
- [Config groups](#config-groups): {groups}
- [Experiment presets](#experiment-presets)
- [Default config: every key](#default-config-every-key): {sections}
"""


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def render(conf_dir: Path = CONF_DIR) -> str:
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        default = _compose("pipeline")
        sources = _default_sources(conf_dir)
        groups = _groups(conf_dir)
        chosen = {
            s.rel.rsplit("/", 1)[0]: s.rel.rsplit("/", 1)[1][:-5] for s in sources if "/" in s.rel
        }
        # Stage order: the groups as the default composition loads them, then the rest.
        order = [g for g in chosen if g in groups]
        order += sorted(g for g in groups if g not in order and g != PRESET_GROUP)
        group_md = [_group_section(conf_dir, g, groups[g], chosen.get(g), default) for g in order]

    top_level = [k for k, v in default.items() if isinstance(v, dict)]
    group_links = ", ".join(f"[`{g}=`](#{_anchor(g)})" for g in order)
    section_links = ", ".join(
        [f"[top-level keys](#{_anchor('top-level keys')})"]
        + [f"[`{k}`](#{_anchor(f'`{k}` keys')})" for k in [*top_level, "hydra"]]
    )
    parts = [
        INTRO.format(command=COMMAND, groups=group_links, sections=section_links),
        _top_level_files(conf_dir),
        "## Config groups\n\nEach option says what choosing it changes in the default config: "
        "the keys it sets to another value, the keys or blocks it adds, and those it removes "
        "(keys relative to the group, e.g. `k` for `communication.k`; `map.*.key` stands for "
        "every entry of a map). The default option's keys are in "
        "[Default config](#default-config-every-key).\n",
        *group_md,
        _presets(conf_dir, groups.get(PRESET_GROUP, [])),
        _defaults_table(conf_dir, default, sources),
    ]
    return _scrub("\n".join(p.rstrip("\n") + "\n" for p in parts))


def _scrub(text: str) -> str:
    """No machine-specific path on the page (values are unresolved; this is the backstop)."""
    text = text.replace(str(ROOT), "<repo>")
    home = str(Path.home())
    if len(home) > 1:
        text = re.sub(re.escape(home) + r"(?=/|\b)", "~", text)
    return text


def _top_level_files(conf_dir: Path) -> str:
    out = ["## Top-level files", ""]
    for f in sorted(conf_dir.glob("*.yaml")):
        c = read_comments(_read(f))
        out.append(f"- {_link(f'conf/{f.name}')}")
        body = _header_markdown(c.header, "  ")
        if body:
            out += [""] + body + [""]
    return "\n".join(out)


def _group_section(
    conf_dir: Path, group: str, options: list[str], chosen: str | None, default: dict
) -> str:
    """One group: each option with its header and what it changes."""
    out = [f"### `{group}=`", ""]
    first = read_comments(_read(conf_dir / group / f"{options[0]}.yaml"))
    package = _package(group, first)
    where = f"keys under `{package}`" if package else "keys anywhere in the config"
    out += [f"`conf/{group}/`; default: {f'`{chosen}`' if chosen else 'none'}; {where}.", ""]
    for name in options:
        rel = f"conf/{group}/{name}.yaml"
        c = read_comments(_read(conf_dir / group / f"{name}.yaml"))
        pkg = _package(group, c)
        tag = " (default)" if name == chosen else ""
        out.append(f"- **`{name}`**{tag}: {_link(rel)}")
        body = _header_markdown(c.header, "  ")
        if body:
            out += [""] + body
        if name == chosen:
            continue
        if group.startswith(HYDRA_GROUP_PREFIX):
            # A plugin's group: not composable here; list the file's own keys.
            f = conf_dir / group / f"{name}.yaml"
            data = yaml.safe_load(_read(f)) or {}
            data.pop("defaults", None)
            bases, _ = _defaults_of(f)
            sets = ", ".join(code(f"{k}={show_leaf(k, v, 40)}") for k, v in leaves(data))
            said = f"Builds on the plugin's `{'`, `'.join(bases)}`; sets {sets}."
        else:
            tree = _compose(f"{group}/{name}")
            option_tree = _node(tree, pkg) if pkg else tree
            default_tree = _node(default, pkg) if pkg else default
            said = changes(default_tree, option_tree, replaces=bool(pkg) and chosen is not None)
        out += ["", "  " + (said or "Changes nothing against the default.")]
    return "\n".join(out) + "\n"


def _presets(conf_dir: Path, names: list[str]) -> str:
    out = [
        "## Experiment presets",
        "",
        f"`experiment=<name>` (`conf/{PRESET_GROUP}/`) sets several groups and keys at once for "
        "a whole-loop run; the file's header has the command and the paper result it should "
        "reproduce. See [experiments.md](experiments.md).",
        "",
        "| preset | what it is | builds on | group overrides |",
        "|---|---|---|---|",
    ]
    for name in names:
        f = conf_dir / PRESET_GROUP / f"{name}.yaml"
        bases, overrides = _defaults_of(f)
        out.append(
            row(
                f"[`{name}`](../conf/{PRESET_GROUP}/{name}.yaml)",
                prose(first_sentence(read_comments(_read(f)).header)),
                ", ".join(code(b) for b in bases),
                ", ".join(code(o) for o in overrides),
            )
        )
    return "\n".join(out) + "\n"


def _defaults_table(conf_dir: Path, default: dict, sources: list[Source]) -> str:
    """Every leaf of the default config, with the comment of the file that sets it, then the
    Hydra settings conf/ sets (not part of the job config, so not in `default`)."""
    comments: dict[str, str] = {}  # a later file's comment wins; no comment keeps the earlier
    origin: dict[str, str] = {}  # the last file that sets the key
    flow: set[str] = set()  # one-line {...} blocks: their comment is on each of their keys
    hydra = OmegaConf.create()
    for s in sources:
        data = yaml.safe_load(_read(conf_dir / s.rel)) or {}
        data.pop("defaults", None)
        if not s.package and "hydra" in data:
            hydra = OmegaConf.merge(hydra, {"hydra": data["hydra"]})
        prefix = f"{s.package}." if s.package else ""
        flow |= {prefix + k for k in s.comments.flow}
        for key, _ in _all_keys(data):
            origin[prefix + key] = s.rel
            c = comment_for(s.comments, key)
            if c:
                comments[prefix + key] = c

    rows: dict[str, list[tuple[str, str, str]]] = {}
    hydra_leaves = leaves(OmegaConf.to_container(hydra, resolve=False))
    for key, value in [*leaves(default), *hydra_leaves]:
        top = key.split(".", 1)[0] if "." in key else "top-level keys"
        section = rows.setdefault(top, [])
        parts = key.split(".")
        for n in range(2, len(parts)):
            block = ".".join(parts[:n])
            if block in comments and block not in flow and all(r[0] != block for r in section):
                section.append((block, "", comments[block]))
        section.append((key, show_leaf(key, value), comments.get(key, "")))

    out = [
        "## Default config: every key",
        "",
        "`python -m matrix.pipeline` with no overrides (each stage reads its own keys). "
        "A block whose comment documents all of its keys has a row of its own. `takes`: "
        "the key's type in its stage's schema (`matrix/<stage>/settings.py`), checked "
        "before any model loads.",
    ]
    for top, section in sorted(rows.items(), key=lambda kv: kv[0] != "top-level keys"):
        files = sorted({origin[k] for k, _, _ in section if k in origin})
        title = "Top-level keys" if top == "top-level keys" else f"`{top}` keys"
        out += ["", f"### {title}", ""]
        if top == "hydra":
            out += [
                "Hydra's own settings that conf/ sets; they are not part of the job config "
                "(`--cfg hydra` prints all of Hydra's).",
                "",
            ]
        if top in comments:
            out += [prose(comments[top]), ""]
        out += [
            "From " + ", ".join(_link(f"conf/{f}") for f in files) + ".",
            "",
            "| key | default | takes | comment |",
            "|---|---|---|---|",
        ]
        for key, value, comment in section:
            shown = code(value) if value else "(block)"
            out.append(row(code(key), shown, takes(key) if value else "", prose(comment)))
    return "\n".join(out) + "\n"


def takes(key: str) -> str:
    """What a key takes, from its stage's typed schema (matrix/*/settings.py); empty where
    no schema types it or it is a whole block."""
    hint = key_type(key)
    text = describe(hint) if hint is not None else ""
    return "" if "a block with keys" in text else prose(text)


def _all_keys(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every key, blocks included, of a plain dict."""
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            yield key, v
            yield from _all_keys(v, key)


# --- command line -----------------------------------------------------------------------


def _shown_path(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def stale_message(text: str, path: Path = DOC) -> str | None:
    """None when `path` holds exactly `text`; else what to run."""
    current = path.read_text(encoding="utf-8") if path.exists() else None
    if current == text:
        return None
    return f"{_shown_path(path)} is out of date: run {COMMAND}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the page differs from conf/"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        message = stale_message(text, DOC)
        if message:
            print(message, file=sys.stderr)
            return 1
        print(f"{_shown_path(DOC)} is up to date")
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {_shown_path(DOC)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
