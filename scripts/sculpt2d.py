"""Compositional Sculpting on 2D oracles: guided (exact / learned classifier) and algebraic routes.

    python scripts/sculpt2d.py --config=configs/sculpt2d.py:quick --workdir=runs/sculpt2d

Writes ``sculpt2d.json``, ``sculpt2d.md``, ``samples/*.npz`` and
``figures/sculpt2d_*.png`` under the workdir (and ``gflownet.json`` when
``config.gflownet`` is set and :mod:`compdiff.gflownet` exists); learned
classifiers live in ``<workdir>/classifiers/`` and are reused by later runs.
"""

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from compdiff import cli, distributed, sculpt2d, train
from compdiff.runtime import configure_cpu

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sculpt2d config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (classifiers are reused).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    configure_cpu()
    distributed.initialize()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.INFO)
    train.quiet_orbax_logs()
    result = sculpt2d.run(_CONFIG.value, _WORKDIR.value)
    print(sculpt2d.markdown(result))


if __name__ == "__main__":
    cli.run(main)
