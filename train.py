"""Train stage: SFT or DPO on generated data. See docs/train.md.

python train.py                                   # SFT, SmolLM2-135M, runs/default/generate/sft.jsonl
python train.py experiment=paper_sft              # the paper's SFT recipe (Llama-3-8B, 8 GPUs)
python train.py model=llama3_8b data=matrix_20k --cfg job
"""

import sys

import hydra
from omegaconf import DictConfig

from matrix.common.secret_guard import guard
from matrix.core.cli import check_command_line, run_stage
from matrix.core.sweep import flags_first


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_stage("train", cfg)


if __name__ == "__main__":
    guard()  # keys on the command line masked from the first line argparse or Hydra prints
    sys.argv = flags_first(sys.argv)  # `-m` may follow the overrides
    check_command_line()
    main()
