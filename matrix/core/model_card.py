"""The model card (README.md, Hugging Face's card format: YAML metadata, then Markdown) of an
exported model folder: the base model and its licence notice, the data with the lineage the
stage manifests record (the generate run, its sets and row counts, the simulation it came
from), the training settings, and the scores of the evaluate runs that named the folder.

The train stage writes it with the folder (`write_card`); each evaluate run of the folder
adds its headline scores (`record_eval_results`), replacing earlier scores of the same
benchmark and metric, in one atomic rewrite under a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from matrix.common.io import atomic_write_text, read_json
from matrix.core.provenance import producer_manifest

log = logging.getLogger(__name__)

CARD = "README.md"
MARK = "matrix"  # the metadata key of the cards matrix writes (lineage, settings)
EVAL_START, EVAL_END = "<!-- matrix:evaluation -->", "<!-- /matrix:evaluation -->"
NO_SCORES = (
    "No evaluation yet: `python evaluate.py eval=<benchmark> eval.model.checkpoint=<this folder>`"
    " adds its scores here."
)


@dataclass(frozen=True)
class TrainedModel:
    """What the train stage knows of the model it exported."""

    name: str
    base_model: str  # model.path as configured
    init: str  # pretrained | random (weights built from model.config)
    license: str | None
    license_notice: str | None
    data_file: str
    data_counts: dict[str, Any]
    settings: dict[str, Any]  # objective, learning rate, epochs, batch, ...
    final_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """One headline score of an evaluate run."""

    benchmark: str
    metric: str
    value: float
    ci95: list[float] | None = None
    n: int | None = None


def base_card(path: str) -> ModelCardData | None:
    """The card data of the base model: a local folder's README.md, or a hub id's README.md
    in the Hugging Face cache (never downloaded); None when there is none."""
    readme: Any = Path(path) / CARD
    if not readme.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            readme = try_to_load_from_cache(path, CARD)
        except Exception:  # noqa: BLE001 - not a hub id (embedded:..., a missing folder)
            return None
        if not isinstance(readme, str):
            return None
    try:
        return ModelCard.load(readme).data
    except Exception as e:  # noqa: BLE001 - a base card we cannot parse names no licence
        log.warning("%s: card not read (%s)", readme, e)
        return None


def licence(model: TrainedModel) -> tuple[str, str | None]:
    """(licence id, notice): the base folder's own card's when it names a licence (it
    describes those weights; an exported SFT model passes its base's on), with its notice, or
    model.license_notice when model.license names the same licence (Meta's own card names
    `llama3` and no notice); else model.license and model.license_notice, else "other"."""
    base = base_card(model.base_model) if model.init == "pretrained" else None
    if base is None or not base.license:
        return model.license or "other", model.license_notice
    same = str(base.license) == model.license
    notice = base.to_dict().get("license_notice") or (model.license_notice if same else None)
    return str(base.license), notice


def data_lineage(data_file: str) -> dict[str, Any]:
    """The generate run that wrote `data_file` (its sets, row counts, the models that wrote the
    rows) and the simulation that run drew from, as their manifests record them."""
    out: dict[str, Any] = {"file": data_file}
    gen_manifest = producer_manifest(Path(data_file).resolve())
    if gen_manifest is None:
        return out
    gen = read_json(gen_manifest)
    config = gen.get("config") or {}
    out["generate"] = {
        "run": str(gen_manifest.parent),
        "generator": (config.get("generator") or {}).get("name"),
        "sets": {s["name"]: {"kind": s["kind"], "rows": s["rows"]} for s in gen.get("sets", [])},
        "models": gen.get("models") or {},
    }
    scenarios = (gen.get("inputs") or {}).get("scenarios")
    sim_manifest = producer_manifest(Path(scenarios["path"]).resolve()) if scenarios else None
    if sim_manifest is not None:
        sim = read_json(sim_manifest)
        counts = sim.get("counts") or {}
        out["simulation"] = {
            "run": str(sim_manifest.parent),
            "population": ((sim.get("config") or {}).get("population") or {}).get("path"),
            **{k: counts[k] for k in ("agents", "groups", "rounds", "scenarios") if k in counts},
        }
    return out


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("-" if c is None else str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _data_section(lineage: dict[str, Any], counts: dict[str, Any]) -> str:
    parts = [f"Trained on `{lineage['file']}`: {counts.get('rows_kept', '?')} of "]
    parts[0] += f"{counts.get('rows', '?')} rows kept, {counts.get('tokens', '?')} tokens."
    gen = lineage.get("generate")
    if gen:
        parts.append(
            f"Generated by the generate run `{gen['run']}` (generator `{gen['generator']}`), "
            "whose sets are:\n\n"
            + _table(
                [(n, s["kind"], s["rows"]) for n, s in gen["sets"].items()], ("set", "kind", "rows")
            )
        )
        if gen["models"]:
            written = ", ".join(f"{role}: `{m}`" for role, m in gen["models"].items())
            parts.append(f"Rows written by {written}.")
    sim = lineage.get("simulation")
    if sim:
        parts.append(
            f"From the MATRIX simulation `{sim['run']}`: {sim.get('agents', '?')} agents "
            f"(profiles `{sim.get('population')}`) in {sim.get('groups', '?')} groups over "
            f"{sim.get('rounds', '?')} rounds, {sim.get('scenarios', '?')} scenarios."
        )
    return "\n\n".join(parts)


def _eval_section(results: list[EvalResult]) -> str:
    if not results:
        return NO_SCORES
    rows = []
    for r in results:
        args = r.metric_args or {}
        ci = args.get("ci95")
        interval = f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else None
        rows.append(
            (
                r.dataset_type,
                r.metric_type,
                f"{r.metric_value:.4g}",
                interval,
                args.get("n"),
                args.get("judge"),
                f"`{args.get('evaluate_run')}`",
            )
        )
    header = ("benchmark", "metric", "value", "95% CI", "n", "judge", "evaluate run")
    return _table(rows, header)


def _with_eval_section(text: str, results: list[EvalResult]) -> str:
    head, _, rest = text.partition(EVAL_START)
    _, _, tail = rest.partition(EVAL_END)
    return f"{head}{EVAL_START}\n{_eval_section(results)}\n{EVAL_END}{tail}"


def render(model: TrainedModel) -> ModelCard:
    """The card of a freshly exported model (no evaluation yet)."""
    licence_id, notice = licence(model)
    lineage = data_lineage(model.data_file)
    gen = lineage.get("generate") or {}
    data = ModelCardData(
        model_name=model.name,
        base_model=model.base_model if model.init == "pretrained" else None,
        license=licence_id,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["matrix", "synthetic-data", str(model.settings.get("objective", "")).lower()],
        datasets=[gen.get("run") or model.data_file],
        license_notice=notice,
        **{MARK: {"data": lineage, "training": model.settings, "data_counts": model.data_counts}},
    )
    base = (
        f"`{model.base_model}`"
        if model.init == "pretrained"
        else f"random weights (model.config) with the tokenizer of `{model.base_model}`"
    )
    settings = _table([(k, v) for k, v in model.settings.items()], ("setting", "value"))
    final = _table([(k, f"{v:.4g}") for k, v in model.final_metrics.items()], ("metric", "final"))
    body = [
        f"# {model.name}",
        f"{model.settings.get('objective')} fine-tune of {base} on post-training data "
        "synthesised by MATRIX (multi-agent simulation, arXiv 2410.14251), trained by matrix.",
        f"## Licence\n\nBase model licence: `{licence_id}`." + (f"\n\n{notice}" if notice else ""),
        "## Training data\n\n" + _data_section(lineage, model.data_counts),
        f"## Training\n\n{settings}"
        + (f"\n\nFinal metrics:\n\n{final}" if model.final_metrics else ""),
        f"## Evaluation\n\n{EVAL_START}\n{NO_SCORES}\n{EVAL_END}",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(body) + "\n")


def write_card(folder: Path, model: TrainedModel) -> Path:
    out = folder / CARD
    atomic_write_text(out, str(render(model)))
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file now at `path` (re-taken if another writer replaced
    it while this one waited)."""
    while True:
        with open(path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                yield
                return


def record_eval_results(folder: Path, scores: list[Score], judge: str, source: Path) -> bool:
    """Add an evaluate run's scores to the card of `folder`, a model the train stage exported;
    False, and nothing written, for any other folder (no card, or another's card, such as a
    downloaded model's, which is never edited)."""
    path = folder / CARD
    if not path.is_file():
        return False
    with _locked(path):
        card = ModelCard.load(path)
        if MARK not in card.data.to_dict():
            return False
        new = {(s.benchmark, s.metric) for s in scores}
        kept = [
            r for r in card.data.eval_results or [] if (r.dataset_type, r.metric_type) not in new
        ]
        card.data.eval_results = kept + [
            EvalResult(
                task_type="text-generation",
                dataset_type=s.benchmark,
                dataset_name=s.benchmark,
                metric_type=s.metric,
                metric_value=float(s.value),
                metric_args={"ci95": s.ci95, "n": s.n, "judge": judge, "evaluate_run": str(source)},
            )
            for s in scores
        ]
        card.data.model_name = card.data.model_name or folder.name
        text = f"---\n{card.data.to_yaml()}\n---\n" + _with_eval_section(
            card.text, card.data.eval_results
        )
        atomic_write_text(path, text)
    return True
