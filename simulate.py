"""Run the MATRIX simulation: python simulate.py [population=...] [communication=...]."""

import hydra
from omegaconf import DictConfig

from matrix.cli import run_stage
from matrix.secrets import guard


@hydra.main(config_path="conf", config_name="simulate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from matrix.sim.run import run_simulate

    run_stage(run_simulate, cfg)


if __name__ == "__main__":
    guard()  # keys on the command line masked from the first line argparse or Hydra prints
    main()
