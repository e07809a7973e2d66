"""RRR Table 3 at CPU scale (classifier guidance): trains or reuses the models, samples, scores.

    python scripts/guidance_table.py --config=configs/guidance_table.py:quick \
        --workdir=runs/guidance_quick

Writes ``guidance_table.json``, ``guidance_table.md`` and ``figures/*.png``
under the workdir; component models live in ``<workdir>/<dataset>/models/`` and are
reused by later runs.
"""

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from compdiff import cli, distributed, guidance_table, train
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
    result = guidance_table.run(_CONFIG.value, _WORKDIR.value)
    print(guidance_table.markdown(result))


if __name__ == "__main__":
    cli.run(main)
