"""The whole loop in one command: simulate -> generate -> train -> evaluate.

    python -m matrix.pipeline experiment=demo
    python -m matrix.pipeline experiment=comm_ablation_tiny -m communication=none,random,structured

The steps, reuse and sweeps are in matrix.core.pipeline; this is the Hydra entry point.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from matrix.common.secret_guard import guard
from matrix.core.cli import check_command_line, run_user_command
from matrix.core.pipeline import objective_value, run_pipeline
from matrix.core.sweep import flags_first, helper_rank


@hydra.main(config_path="../conf", config_name="pipeline", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    run_user_command(run_pipeline, cfg)
    if not cfg.pipeline.get("objective") or helper_rank():
        return None
    # a returned value is what an optimising sweeper (Optuna) maximises
    return run_user_command(objective_value, cfg)


if __name__ == "__main__":
    guard()  # keys on the command line masked from the first line argparse or Hydra prints
    sys.argv = flags_first(sys.argv)
    check_command_line()
    main()
