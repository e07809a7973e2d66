"""Runs a sweep declared in a config file: one subprocess per point, resumable, collated.

    python scripts/sweep.py --config=configs/experiments/table2d.py:paper \
        --sweep=hmc_step_damping \
        --workdir=runs/sweep_hmc [--parallel=2]
    python scripts/sweep.py ... --print_commands [--launcher='./launch_tpu.sh --name=...']

Each point runs the config's entrypoint in ``WORKDIR/<point name>`` (log:
``sweep.log`` there). Rerunning skips finished points, so a killed sweep
rerun finishes only the missing ones. ``WORKDIR/sweep.csv`` and
``WORKDIR/sweep.md`` collate every finished point (the swept keys, then the
metrics). ``--print_commands`` prints one ``launch_tpu.sh`` command per
unfinished point instead of running anything. See :mod:`compdiff.sweep`.
"""

import os
import sys

from absl import flags

from compdiff import cli
from compdiff import sweep as sweep_lib

_CONFIG = flags.DEFINE_string("config", None, "Config file[:variant] that defines the sweep.")
_SWEEP = flags.DEFINE_string("sweep", None, "Name of the sweep (the config's get_sweep(name)).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: one subdirectory per point.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Points run at once on this machine.",
                                 lower_bound=1)
_PRINT = flags.DEFINE_bool("print_commands", False, "Print one launch_tpu.sh command per "
                           "unfinished point (workdir as given, e.g. gs://...) instead of running.")
_LAUNCHER = flags.DEFINE_string("launcher", sweep_lib.DEFAULT_LAUNCHER,
                                "Command prefix of --print_commands, before ' -- python ...'.")
_COLLATE = flags.DEFINE_bool("collate_only", False, "Run nothing: adopt points whose complete "
                              ".json metrics file has no marker (run elsewhere, e.g. on a TPU "
                              "VM, and copied here), then rewrite sweep.csv / sweep.md.")
flags.mark_flags_as_required(["config", "sweep", "workdir"])


def main(argv: list[str]) -> None:
    cli.start(argv, uses_jax=False)  # each point's entrypoint starts JAX
    spec = sweep_lib.resolve(_CONFIG.value, _SWEEP.value)  # every error before anything runs
    if _PRINT.value:
        remote = "://" in _WORKDIR.value
        for line, (name, _) in zip(sweep_lib.launch_commands(spec, _WORKDIR.value,
                                                             _LAUNCHER.value), spec.points):
            if remote or not sweep_lib.is_finished(_WORKDIR.value, name):
                print(line)
        return
    workdir = os.path.abspath(_WORKDIR.value)
    os.makedirs(workdir, exist_ok=True)
    print(f"sweep {_SWEEP.value}: {len(spec.points)} points of {spec.config_arg()} "
          f"-> {workdir}", flush=True)
    if _COLLATE.value:
        failures = []
        adopted = sweep_lib.adopt(spec, workdir)
        if adopted:
            print(f"adopted {len(adopted)} points run elsewhere: {', '.join(adopted)}")
    else:
        failures = sweep_lib.run(spec, workdir, _PARALLEL.value,
                                 echo=lambda s: print(s, flush=True))
    rows, missing = sweep_lib.collate(spec, workdir)
    print(open(os.path.join(workdir, "sweep.md")).read())
    print(f"{len(rows)} of {len(spec.points)} points finished: "
          f"{os.path.join(workdir, 'sweep.csv')}")
    if failures:
        # Exit status 1 with one line per failure (a failed point is not a bug of this script).
        sys.exit(f"sweep.py: {len(failures)} points failed:\n" + "\n".join(failures))


if __name__ == "__main__":
    cli.run(main)
