"""Runs an experiment: ``--config`` names it (``config.experiment``), the protocol does the rest.

    python scripts/run.py --config=configs/experiments/table2d.py:quick --workdir=runs/quick

Writes ``<experiment>.json`` and ``<experiment>.md`` (and the experiment's samples and
figures) under the workdir, reusing the models trained there by earlier runs, and prints
the Markdown table. Fields are overridable: ``--config.num_samples=500``. See
``docs/experiments.md``.
"""

from absl import flags, logging
from ml_collections import config_flags

from compdiff import cli
from compdiff.experiments import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Output directory (trained models are reused from it).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    cli.start(argv)
    logging.set_verbosity(logging.INFO)
    result = common.run(_CONFIG.value, _WORKDIR.value)
    with open(f"{_WORKDIR.value}/{result['experiment']}.md") as f:
        print(f.read())


if __name__ == "__main__":
    cli.run(main)
