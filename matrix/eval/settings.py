"""The evaluate stage's typed config schema: `eval` and each benchmark's options (conf/eval/).
Checked against the composed config before any model loads
(matrix.core.value_check.check_schemas), so a wrong option fails in seconds, not after the
judge has been paid; a new option is one YAML line and one field here. What needs the world
(files, folders, llm roles) is checked by matrix.eval.run.validate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from matrix.common.schema import Count, Natural, required
from matrix.core.settings import LLMStage
from matrix.llm.protocol import Sampling


@dataclass(frozen=True)
class Options:
    """What every benchmark takes."""

    limit: Count | None = None  # first N items; null: all
    sampling: Sampling | None = None  # the model under test's, over eval.sampling
    judge_sampling: Sampling | None = None


@dataclass(frozen=True)
class AlpacaEval2(Options):
    seed: int = 0
    soft_preferences: bool = True
    top_logprobs: Natural = 5


@dataclass(frozen=True)
class ArenaHard(Options):
    n_bootstrap: Count = 100
    strong_weight: Count = 3
    style_control: list[Literal["length", "markdown"]] | None = None
    # a game whose verdict does not parse: loss (one lost battle) | drop (arena-hard-auto)
    unparsed_verdicts: Literal["loss", "drop"] = "loss"


@dataclass(frozen=True)
class MTBench(Options):
    category_temperature: bool = True


@dataclass(frozen=True)
class MTBench101(Options):
    tasks: list[str] | None = None
    # score and ability columns: mean over dialogues (the MATRIX paper's Table 5) | mean of the
    # task means (OpenCompass)
    aggregate: Literal["dialogues", "tasks"] = "dialogues"


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float | None = None
    cpu_s: Count | None = None
    memory_mb: Count | None = None


@dataclass(frozen=True)
class HumanEval(Options):
    n_samples: Count = 1
    ks: list[Count] | None = None
    limits: SandboxLimits | None = None


@dataclass(frozen=True)
class MBPP(HumanEval):
    subset: Literal["full", "sanitized"] = "full"


@dataclass(frozen=True)
class Safety(Options):
    use_judge: bool = True
    # paper: the MATRIX paper's 100 prompts, helpfulness / harmlessness ratings and keyword ASR;
    # advbench_xstest: AdvBench (520) ASR and XSTest (450) over-refusal
    protocol: Literal["paper", "advbench_xstest"] = "paper"
    # the ASR keywords; null: the protocol's (paper: 15, advbench_xstest: llm-attacks' 29)
    refusal_keywords: Literal["paper", "llm_attacks"] | None = None
    prompt_file: str | None = None  # protocol paper: a JSONL of prompts replacing the shipped 100


@dataclass(frozen=True)
class CustomColumns:
    instruction: str  # the column of the questions
    id: str | None = None
    reference: str | None = None
    category: str | None = None


@dataclass(frozen=True)
class Custom(ArenaHard):
    path: str = required()  # questions: JSONL, CSV, parquet, a datasets folder or cached name
    split: str | None = None  # a DatasetDict's split; null: train
    columns: CustomColumns = required()  # the file's column of each field
    format: Literal["auto", "jsonl", "csv"] = "auto"
    on_error: Literal["fail", "skip"] = "fail"
    mode: Literal["auto", "pairwise", "single"] = "auto"
    baseline: Literal["reference", "role", "run"] = "reference"
    baseline_role: str | None = None
    baseline_run: str | None = None


@dataclass(frozen=True)
class Benchmarks:
    """The benchmarks to run; a name not here is refused by the key check."""

    alpaca_eval2: AlpacaEval2 | None = None
    arena_hard: ArenaHard | None = None
    mt_bench: MTBench | None = None
    mt_bench_101: MTBench101 | None = None
    humaneval: HumanEval | None = None
    mbpp: MBPP | None = None
    safety: Safety | None = None
    custom: Custom | None = None


# The llm role evaluated when neither eval.model.checkpoint nor eval.model.role is set.
DEFAULT_MODEL_ROLE = "responder"


@dataclass(frozen=True)
class Model:
    """The model under test: a checkpoint folder or an llm role, at most one of them; with
    neither, the `responder` role (so `eval.model.checkpoint=...` alone replaces it)."""

    checkpoint: str | None = None
    role: str | None = None

    @staticmethod
    def rules(block: dict) -> list[tuple[str, str]]:
        if not (block.get("checkpoint") and block.get("role")):
            return []
        return [
            (
                "checkpoint",
                "set one of eval.model.checkpoint (a model folder) or eval.model.role, not both "
                "(set the other to null)",
            )
        ]


def model_role(model) -> str | None:
    """The llm role under test for an `eval.model` block: its role, else DEFAULT_MODEL_ROLE
    when no checkpoint is given; None for a checkpoint."""
    if model.get("checkpoint"):
        return None
    return str(model.get("role") or DEFAULT_MODEL_ROLE)


@dataclass(frozen=True)
class Eval:
    model: Model
    benchmarks: Benchmarks
    sampling: Sampling = Sampling()
    chunk_size: Count = 64
    limit: Count | None = None  # caps every benchmark's limit (debug=tiny)
    compare: list[str] | None = None  # two evaluate stage folders, side by side

    @staticmethod
    def rules(block: dict) -> list[tuple[str, str]]:
        compare = block.get("compare")
        if compare and len(compare) != 2:
            return [("compare", f"{compare!r}: list exactly two evaluate stage folders")]
        if not compare and not block["benchmarks"]:
            return [("benchmarks", "empty; pick a preset such as eval=suite or eval=demo")]
        return []


@dataclass(frozen=True)
class EvaluateSettings(LLMStage):
    eval: Eval
