"""A seed source defined outside matrix, named by `_target_` alone (the README's "add a seed
source" row): the generate stage checks its template fields, draws its seeds, writes rows
with its name in their lineage, and resumes it."""

import sys
import textwrap

import pytest

from matrix.common.validation import ConfigError
from matrix.gen.run import run_generate
from tests.doubles import SCRIPTED_ROLES, compose_generate, read_rows, scripted_backends

TOPICS = '''
from matrix.gen.inputs import Seed
from matrix.gen.sources import SeedSource


class TopicSeed(Seed):
    def fields(self, max_actions, max_action_chars):
        return {"topic": self.key}


class Topics(SeedSource):
    """One seed per topic of its own list; no simulation read."""

    name = "topics"
    fields = ("need", "topic")

    def __init__(self, topics):
        self.topics = list(topics)

    def seeds(self, ctx, spec):
        return [TopicSeed(t) for t in self.topics]
'''

PROMPT = "+generator.sets.general.prompts.instruction.user='Ask about {topic} ({need}).'"


@pytest.fixture
def topics_module(tmp_path, monkeypatch):
    (tmp_path / "my_sources.py").write_text(textwrap.dedent(TOPICS))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_sources.Topics"
    sys.modules.pop("my_sources", None)


def _cfg(tmp_path, *overrides):
    return compose_generate(
        tmp_path,
        "generate.simulation_dir=/nonexistent/simulate",  # this source never reads it
        "generator=sft_general",
        "generator.sets.general.target=3",
        "~generator.sets.general.prompts.instruction",
        PROMPT,
        *overrides,
        *SCRIPTED_ROLES,
    )


def test_a_users_seed_source_runs_by_config_alone(tmp_path, topics_module):
    cfg = _cfg(
        tmp_path,
        "~generator.sets.general.source",
        f"+generator.sets.general.source._target_={topics_module}",
        "+generator.sets.general.source.topics=[tides,kites,bread]",
    )
    seen: list[str] = []
    backends = scripted_backends()
    scripted = backends["gen"].generate

    def recording(chats, sampling):
        seen.extend(c[-1]["content"] for c in chats)
        return scripted(chats, sampling)

    backends["gen"].generate = recording
    run_generate(cfg, backends=backends)
    rows = read_rows(tmp_path / "runs" / "default" / "generate" / "sft.jsonl")
    assert len(rows) == 3
    assert {r["lineage"]["source"] for r in rows} == {"topics"}
    assert all(r["lineage"]["scenario_ids"] == [] for r in rows)
    # the generator was asked with the source's own template field filled in
    asked = " ".join(seen)
    assert "Ask about tides" in asked and "Ask about kites" in asked


def test_a_users_seed_source_is_checked_before_any_model_loads(tmp_path, topics_module):
    # a template field the source does not fill
    bad = _cfg(
        tmp_path,
        "~generator.sets.general.source",
        f"+generator.sets.general.source._target_={topics_module}",
        "+generator.sets.general.source.topics=[tides]",
        "generator.sets.general.prompts.instruction.user='Ask about {scenario}.'",
    )
    with pytest.raises(ConfigError, match=r"generator.sets.general.prompts.instruction.*scenario"):
        run_generate(bad, backends=scripted_backends())
    # a class that cannot be imported, and a typo of a shipped name
    missing = _cfg(
        tmp_path,
        "~generator.sets.general.source",
        "+generator.sets.general.source._target_=my_sources.Nope",
    )
    with pytest.raises(ConfigError, match=r"generator.sets.general.source: cannot build"):
        run_generate(missing, backends=scripted_backends())
    typo = _cfg(tmp_path, "generator.sets.general.source=simulaton")
    with pytest.raises(ConfigError, match=r"generator.sets.general.source.*'simulation'"):
        run_generate(typo, backends=scripted_backends())


def test_the_schema_names_every_shipped_source():
    import typing

    from matrix.gen.settings import GeneratorSet
    from matrix.gen.sources import SOURCES

    hint = typing.get_type_hints(GeneratorSet)["source"]
    literal = next(a for a in typing.get_args(hint) if typing.get_origin(a) is typing.Literal)
    assert set(typing.get_args(literal)) == set(SOURCES)
