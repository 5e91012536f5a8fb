"""Evaluate a model: python evaluate.py eval=alpaca_eval2 eval.model.checkpoint=<folder>."""

import sys

import hydra
from omegaconf import DictConfig

from matrix.common.secret_guard import guard
from matrix.core.cli import check_command_line, run_stage
from matrix.core.sweep import flags_first


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_stage("evaluate", cfg)


if __name__ == "__main__":
    guard()  # keys on the command line masked from the first line argparse or Hydra prints
    sys.argv = flags_first(sys.argv)  # `-m` may follow the overrides
    check_command_line()
    main()
