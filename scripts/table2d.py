"""RRR's 2D composition table: trains (or reuses) the component models, samples, evaluates.

    python scripts/table2d.py --config=configs/table2d.py:quick --workdir=runs/table2d

Writes ``table2d.json``, ``table2d.md``, ``samples/*.npz`` and ``figures/*.png``
under the workdir; component models live in ``<workdir>/models/`` and are
reused by later runs.
"""

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from compdiff import cli, distributed, table2d, train
from compdiff.runtime import configure_cpu

_CONFIG = config_flags.DEFINE_config_file("config", None, "Table config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (models are reused from it).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    configure_cpu()
    distributed.initialize()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.INFO)
    train.quiet_orbax_logs()
    result = table2d.run(_CONFIG.value, _WORKDIR.value)
    print(table2d.markdown(result))


if __name__ == "__main__":
    cli.run(main)
