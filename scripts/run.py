"""Runs an experiment: ``--config`` names it (``config.experiment``), the protocol does the rest.

    python scripts/run.py --config=configs/experiments/table2d.py:quick --workdir=runs/quick

Writes ``<experiment>.json`` and ``<experiment>.md`` (and the experiment's samples and
figures) under the workdir, reusing the models trained there by earlier runs, and prints
the Markdown table. Fields are overridable: ``--config.num_samples=500``. See
``docs/experiments.md``.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from compdiff import cli, distributed
from compdiff.experiments import common
from compdiff.runtime import configure_cpu
from compdiff.training import writers

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Output directory (trained models are reused from it).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    configure_cpu()
    distributed.initialize()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    writers.quiet_orbax_logs()
    result = common.run(_CONFIG.value, _WORKDIR.value)
    with open(f"{_WORKDIR.value}/{result['experiment']}.md") as f:
        print(f.read())


if __name__ == "__main__":
    cli.run(main)
