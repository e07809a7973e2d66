"""Does a trained energy model tie its noise levels together as its data does?

    python scripts/energy_levels.py --workdir=runs/guidance_cpu/digits/models/energy \
        [--num=64] [--levels=2,5,10,20,50] [--out=energy_levels.json]

Reads the model and its data config from ``--workdir``, builds level-``t`` points from
``--num`` held-out images and from as many images of uniform pixel noise (the same
forward noise for both), and prints, per level, the mean ``log p_t`` of each and the
mean SMC/AIS increment ``log p_{t-1}(x) - log p_t(x)``
(:mod:`compdiff.evaluation.level_consistency`). An energy whose increments favour the
noise-built points (``reference_favoured`` above 0.5) steers every importance-weighted
sampler toward noise. Writes JSON and a Markdown table when ``--out`` is given.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from compdiff import cli
from compdiff.data import images
from compdiff.evaluation.level_consistency import level_increments
from compdiff.experiments import common
from compdiff.models.loading import load_model, load_params

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of a trained energy model.")
_NUM = flags.DEFINE_integer("num", 64, "Held-out images (and noise images).", lower_bound=2)
_LEVELS = flags.DEFINE_list("levels", ["2", "5", "10", "20", "50"], "Levels t to check.")
_OUT = flags.DEFINE_string("out", None, "Write JSON here, and Markdown beside it.")
flags.mark_flags_as_required(["workdir"])


def check(workdir: str, num: int, levels: list[int]) -> dict:
    """The per-level rows for the model in ``workdir`` on its held-out split."""
    config = load_params(workdir)[0]
    model = load_model(workdir)
    model.require_log_prob(f"the level-consistency check of {workdir}")
    source = images.ImageSource.from_config(config.data, split="test").source
    count = min(num, len(source))
    data = np.stack([images.to_unit_range(source[i]["image"]) for i in range(count)])
    data = data.reshape(count, -1)
    noise = np.random.default_rng(0).uniform(-1, 1, data.shape).astype(np.float32)
    rows = level_increments(model, jnp.asarray(data), jnp.asarray(noise), model.schedule,
                            levels, jax.random.PRNGKey(0))
    return {"workdir": os.path.abspath(workdir), "num": count,
            "data": f"{config.data.source}/{config.data.builder_config}", "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"Model `{result['workdir']}` on {result['num']} held-out images of "
             f"`{result['data']}` and as many uniform-noise images.", "",
             "| level | log p (data) | log p (noise) | increment (data) | increment (noise) "
             "| noise favoured |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['level']} | {r['log_p_data']:.1f} | {r['log_p_reference']:.1f} | "
                     f"{r['increment_data']:.2f} | {r['increment_reference']:.2f} | "
                     f"{r['reference_favoured']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    cli.start(argv)
    try:
        levels = [int(v) for v in _LEVELS.value]
    except ValueError as e:
        raise ValueError(f"--levels must be integers, got {_LEVELS.value}") from e
    result = check(_WORKDIR.value, _NUM.value, levels)
    common.report(result, markdown(result), _OUT.value)


if __name__ == "__main__":
    cli.run(main)
