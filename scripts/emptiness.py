"""False-alarm and detection rates of the emptiness verdict on oracle compositions.

    python scripts/emptiness.py [--seeds=5] [--out=docs/emptiness.json]

Runs :func:`compdiff.evaluation.diagnostics.mass_verdict` (annealed HMC with SMC
resampling, as ``scripts/sample.py`` does with ``--sampler=hmc
--resample_ess=0.5``) on 2D oracle compositions that hold mass and on ones
that are empty by construction, over several seeds, and prints each
statistic's range with the verdict counts as a Markdown table.
"""

import json
import time

import jax
from absl import flags

from compdiff import cli, distributed, samplers, schedules
from compdiff.data import toy2d
from compdiff.evaluation import diagnostics

_SEEDS = flags.DEFINE_integer("seeds", 5, "Seeds per composition.", lower_bound=1)
_NUM = flags.DEFINE_integer("num", 1000, "Chains per annealed run.", lower_bound=1)
_LEVELS = flags.DEFINE_integer("levels", 100, "Levels of the linear schedule.",
                                lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")

# (name, expression over datasets as a function of a getter, empty by construction)
CASES = [
    ("ring * bar", lambda g: g("ring") * g("bar"), False),
    ("big_box * small_box", lambda g: g("big_box") * g("small_box"), False),
    ("ring * right_half_ring", lambda g: g("ring") * g("right_half_ring"), False),
    ("bar * left_bar (touching)", lambda g: g("bar") * g("left_bar"), False),
    ("ring / left_half_ring^0.5", lambda g: g("ring") / g("left_half_ring") ** 0.5, False),
    ("big_box / small_box^0.5", lambda g: g("big_box") / g("small_box") ** 0.5, False),
    ("left_bar * right_bar", lambda g: g("left_bar") * g("right_bar"), True),
    ("left_half_ring * right_half_ring",
     lambda g: g("left_half_ring") * g("right_half_ring"), True),
    ("small_box / big_box^0.5", lambda g: g("small_box") / g("big_box") ** 0.5, True),
]


def main(argv: list[str]) -> None:
    distributed.initialize()
    del argv
    schedule = schedules.get("linear", _LEVELS.value)
    hmc = samplers.get("hmc", steps_per_level=3, leapfrog=3, step=0.03, damping=0.5,
                       resample_ess=0.5)
    g = lambda name: toy2d.get(name, schedule)
    rows, t0 = [], time.time()
    for name, build, truth in CASES:
        runs = [diagnostics.mass_verdict(build(g), hmc, schedule, jax.random.PRNGKey(seed),
                                         _NUM.value) for seed in range(_SEEDS.value)]
        overlap = [r.log_overlap / 2 for r in runs if r.log_overlap is not None]
        negation = [r.log_negation for r in runs if r.log_negation is not None]
        rows.append({"composition": name, "empty": truth,
                     "flagged": sum(r.empty for r in runs), "runs": len(runs),
                     "log_overlap_per_dim": overlap, "log_negation": negation})
        print(f"{name}: flagged {rows[-1]['flagged']}/{len(runs)} ({time.time() - t0:.0f}s)",
              flush=True)
    rng = lambda v: "-" if not v else f"{min(v):.3g} .. {max(v):.3g}"
    print(f"\nT={_LEVELS.value}, {_NUM.value} chains, {_SEEDS.value} seeds, "
          f"{time.time() - t0:.0f}s; thresholds: overlap/dim < "
          f"{diagnostics.OVERLAP_THRESHOLD:g}, negation < {diagnostics.NEGATION_THRESHOLD:.3g}\n")
    print("| composition | empty by construction | log m+ per dim | log m- | flagged empty |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['composition']} | {'yes' if r['empty'] else 'no'} | "
              f"{rng(r['log_overlap_per_dim'])} | {rng(r['log_negation'])} | "
              f"{r['flagged']}/{r['runs']} |")
    wrong = sum(r["flagged"] if not r["empty"] else r["runs"] - r["flagged"] for r in rows)
    print(f"\nfalse alarms + misses: {wrong} of {sum(r['runs'] for r in rows)} verdicts")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    cli.run(main)
