"""Trains a diffusion model; rerunning with the same workdir resumes from its last checkpoint.

    python scripts/train.py --config=configs/models/toy2d.py:dataset=ring,param=energy_l2 \
        --workdir=runs/ring_energy_l2 [--config.train.steps=200]
"""

from absl import app, flags
from ml_collections import config_flags

from compdiff import cli, distributed, train
from compdiff.runtime import configure_cpu
from compdiff.training import writers

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    configure_cpu()
    distributed.initialize()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    writers.quiet_orbax_logs()
    train.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
