"""Evaluate a model: python evaluate.py eval=alpaca_eval2 eval.model.checkpoint=<folder>."""

import hydra
from omegaconf import DictConfig

from matrix.cli import run_stage
from matrix.secrets import guard


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from matrix.eval.run import run_evaluate

    run_stage(run_evaluate, cfg)


if __name__ == "__main__":
    guard()  # keys on the command line masked from the first line argparse or Hydra prints
    main()
