"""Analyse generate runs as the paper does: python -m matrix.analyze <runs> [options] [overrides].

    python -m matrix.analyze runs/demo/generate
    python -m matrix.analyze runs/a/generate runs/b/generate --out reports/a_vs_b
    python -m matrix.analyze runs/big/generate --limit 2000 llm=openai_compatible \\
        llm.backends.api.model=gpt-4-1106-preview

Writes report.md, analysis.json, the figures (PNG) and their per-row values (CSV) into --out
(default: `analysis/` in the first run's folder, beside its generate folder). The judge is the `judge` role
of the `llm` config, which `key=value` overrides change as for any stage; its answers go
through the shared LLM call cache and are kept in `judge/<run>.jsonl`, so an interrupted
analysis resumes without asking twice.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from matrix.analysis.data_analysis import analyze

log = logging.getLogger("matrix.analyze")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number >= 1")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m matrix.analyze",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[1:]),
    )
    p.add_argument(
        "args",
        nargs="+",
        metavar="RUN | key=value",
        help="generate run folders (or run folders holding generate/), then config overrides",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="report folder (default: runs/<first run>/analysis)"
    )
    p.add_argument(
        "--limit", type=_positive, default=None, help="judge only the first N rows of each run"
    )
    p.add_argument("--no-judge", action="store_true", help="skip the judged figures (5 and 7)")
    p.add_argument("--batch-size", type=_positive, default=64, help="instructions per judge batch")
    p.add_argument(
        "--judge-max-tokens",
        type=_positive,
        default=96,
        help="tokens the judge may write per answer (its JSON tags need about 40)",
    )
    return p


def compose_config(overrides: list[str]) -> DictConfig:
    """The pipeline config with `overrides` (unknown keys named with a suggestion, exit 2)."""
    from hydra import compose, initialize_config_dir

    from matrix.core.cli import check_command_line
    from matrix.core.config_check import CONF_DIR

    check_command_line(overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("pipeline", overrides=overrides)


def check_judge(cfg: DictConfig) -> None:
    """The judge role exists and its model can be reached (server, key, model folder), before
    any work: the same preflight the stages run (matrix.llm.preflight)."""
    from matrix.common.validation import ConfigError, ConfigProblems
    from matrix.llm.preflight import ModelCheck

    if "judge" not in (cfg.llm.get("roles") or {}):
        raise ConfigError(
            "llm.roles.judge: not defined; add llm.roles.judge={backend: ..., max_new_tokens: ...}"
            " or pass --no-judge"
        )
    p = ConfigProblems()
    timeout = float((cfg.llm.get("preflight") or {}).get("timeout", 10))
    ModelCheck(timeout).stage(cfg, "analyze", ["judge"]).report(p)
    p.raise_if_any("analyze")


def run(cfg: DictConfig, paths: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    from matrix.llm.embeddings import DEFAULT_ENCODER, Encoder
    from matrix.llm.roles import Roles

    cache_dir = cfg.paths.get("cache_dir")
    encoders: dict[str, Encoder] = {}

    def encoder_for(model: str | None) -> Encoder:
        model = model or DEFAULT_ENCODER
        if model not in encoders:
            encoders[model] = Encoder(model, cache_dir=cache_dir)
        return encoders[model]

    roles = None
    if not args.no_judge:
        check_judge(cfg)
        roles = Roles(cfg.llm)
    result = analyze(
        paths,
        args.out,
        judge=roles.get("judge") if roles is not None else None,
        encoder=encoder_for(cfg.get("embedding", {}).get("model")),
        encoder_for=encoder_for,
        limit=args.limit,
        batch_size=args.batch_size,
        judge_ledger=(lambda: roles.ledger()) if roles is not None else None,
        max_new_tokens=args.judge_max_tokens,
    )
    return result


def main(argv: list[str] | None = None) -> None:
    from matrix.core.cli import run_user_command

    p = _parser()
    args = p.parse_args(argv)
    overrides = [a for a in args.args if "=" in a]
    paths = [Path(a) for a in args.args if "=" not in a]
    if not paths:
        p.error("name at least one generate run folder")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = compose_config(overrides)
    result = run_user_command(lambda c: run(c, paths, args), cfg)
    print(f"wrote {Path(result['report'])}")
