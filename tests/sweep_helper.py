"""A stand-in entrypoint for tests/test_sweep.py (config: tests/sweep_helper_config.py).

    python tests/sweep_helper.py --config=tests/sweep_helper_config.py --workdir=DIR

Appends one line to ``DIR/runs.txt`` per start, sleeps ``sleep / 2``, writes
half of ``DIR/metrics.json``, sleeps again, then writes all of it: a kill in
between leaves a half-written metrics file, as a real run killed mid-write
would. Fails (a ValueError) when ``x == fail_x`` on a workdir's first run.
"""

import json
import os
import time

from absl import flags
from ml_collections import config_flags

from compdiff import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    config, workdir = _CONFIG.value, _WORKDIR.value
    runs = os.path.join(workdir, "runs.txt")
    first = not os.path.exists(runs)
    with open(runs, "a") as f:
        f.write(f"{os.getpid()} {time.time()}\n")
    if first and config.x == config.fail_x:
        raise ValueError(f"x = {config.x} fails on a first run")
    text = json.dumps({"score": config.x * config.y, "lr": config.opt.lr, "ok": True})
    time.sleep(config.sleep / 2)
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        f.write(text[: len(text) // 2])
        f.flush()
        time.sleep(config.sleep / 2)
        f.write(text[len(text) // 2:])


if __name__ == "__main__":
    cli.run(main)
