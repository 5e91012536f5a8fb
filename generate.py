"""MATRIX-Gen: python generate.py [generator=...] [simulation_dir=...] -> SFT / DPO data."""

import hydra
from omegaconf import DictConfig

from matrix.cli import run_stage
from matrix.secrets import guard


@hydra.main(config_path="conf", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from matrix.gen.run import run_generate

    run_stage(run_generate, cfg)


if __name__ == "__main__":
    guard()  # keys on the command line masked from the first line argparse or Hydra prints
    main()
