"""Trains a diffusion model; rerunning with the same workdir resumes from its last checkpoint.

    python scripts/train.py --config=configs/models/toy2d.py:dataset=ring,param=energy_l2 \
        --workdir=runs/ring_energy_l2 [--config.train.steps=200]
"""

from absl import flags
from ml_collections import config_flags

from compdiff import cli, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    cli.start(argv)
    train.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
