"""Runs the GFlowNet sculpting table on its own and writes ``{"rows": [...]}`` as JSON.

    python -m compdiff.gflownet --variant=quick --out=runs/gflownet/gflownet.json

(``scripts/sculpt2d.py`` writes the same rows to ``DIR/gflownet.json`` beside the
diffusion table.) Besides the rows the file records the variant, the machine
and the wall seconds.
"""

import json
import os
import time

from absl import app, flags

from compdiff import cli
from compdiff.gflownet import table
from compdiff.runtime import configure_cpu
from compdiff.table2d import machine

_VARIANT = flags.DEFINE_enum("variant", "quick", list(table.VARIANTS), "Config variant.")
_OUT = flags.DEFINE_string("out", None, "Path of the JSON file to write.")
flags.mark_flag_as_required("out")


def main(argv: list[str]) -> None:
    configure_cpu()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    start = time.time()
    rows = table.gflownet_table(table.default_config(_VARIANT.value))
    result = {"variant": _VARIANT.value, "machine": machine(),
              "wall_seconds": round(time.time() - start, 1), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=1)
    print(table.markdown(rows))
    print(f"wall {result['wall_seconds']}s -> {_OUT.value}")


if __name__ == "__main__":
    cli.run(main)
