"""Config problems are reported before any model loads, naming the key and the fix."""

import pytest
from hydra.errors import MissingConfigException

from matrix.common.validation import ConfigError
from matrix.core.config_check import check_stage
from matrix.gen.config import validate
from matrix.gen.run import run_generate
from tests.doubles import compose_generate


class Untouchable:
    name = "untouchable"

    def generate(self, chats, sampling):
        raise AssertionError("validation must fail before any LLM call")


def test_missing_simulation_names_key_and_command(tmp_path):
    cfg = compose_generate(tmp_path, f"generate.simulation_dir={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError) as e:
        run_generate(cfg, backends={"smollm2": Untouchable()})
    msg = str(e.value)
    assert "simulation_dir" in msg and "python simulate.py" in msg and "scenarios.jsonl" in msg
    assert not (tmp_path / "runs" / "default" / "generate").exists()


def test_all_problems_listed_at_once(tmp_path, sim_dir):
    cfg = compose_generate(
        tmp_path,
        f"generate.simulation_dir={sim_dir}",
        "generator=tiny",
        "generator.sets.general.target=0",
        "generator.sets.complex.kind=kto",
        "generator.sets.safety.need=sefety",
        "generator.sets.multi_turn.prompts.follow_up=null",
        "generator.sets.general.prompts.instruction.user='About {scenery}'",
        "generate.limit=0",
        "generate.retrieval.mmr_lambda=2",
    )
    with pytest.raises(ConfigError) as e:
        check_stage(cfg, "generate")  # the typed values and the stage's own checks at once
    msg = str(e.value)
    for key in (
        "generator.sets.general.target",
        "generator.sets.complex.kind",
        "generator.sets.safety.need",
        "generator.sets.multi_turn.prompts.follow_up",
        "generator.sets.general.prompts.instruction",
        "generate.limit",
        "generate.retrieval.mmr_lambda",
    ):
        assert key in msg, key
    assert "scenery" in msg


def test_rejected_model_must_be_a_model_folder(tmp_path, sim_dir):
    cfg = compose_generate(
        tmp_path,
        f"generate.simulation_dir={sim_dir}",
        "generator=dpo_complex",
        f"generate.rejected_model={tmp_path / 'no_model'}",
    )
    with pytest.raises(ConfigError, match="rejected_model"):
        validate(cfg).raise_if_any("generate")


def test_unknown_generator_name_is_refused_with_the_options(tmp_path):
    with pytest.raises(MissingConfigException) as e:
        compose_generate(tmp_path, "generator=sft_genral")
    assert "sft_general" in str(e.value)


@pytest.mark.parametrize(
    "name",
    [
        "sft_general",
        "dpo_complex",
        "code",
        "safety",
        "multi_turn",
        "reasoning",
        "magpie",
        "persona_only",
        "matrix_20k",
        "tiny",
    ],
)
def test_every_generator_option_composes_and_validates(tmp_path, sim_dir, name):
    cfg = compose_generate(tmp_path, f"generator={name}", f"generate.simulation_dir={sim_dir}")
    validate(cfg).raise_if_any("generate")
    if name == "matrix_20k":
        assert (
            cfg.generator.sets.general.target == 10_000
            and cfg.generator.sets.complex.target == 10_000
        )
