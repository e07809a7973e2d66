"""Mixing check behind HMC's default momentum damping: annealed HMC against exact targets.

For each damping ``gamma`` and kernel steps per level, annealed HMC (no
resampling, so the kernel alone must do the work) samples two exact targets:

- ``gauss``: an isotropic Gaussian with std 0.2 at level 0; the level-1
  variance is exact, and the error is reported in standard errors of the
  sample variance (``z``; |z| < 3 is within noise);
- ``ring*bar``: the closed-form product of RRR's ring and a bar; two-sample
  KS p-value (min over 4 projections) against exact samples.

    python scripts/damping.py [--num=4000] [--out=docs/damping.json]

Prints a Markdown table; the chosen default is the damping that passes both
checks at every steps-per-level setting (``docs/design_notes.md``).
"""

import json
import time

import jax
import numpy as np
from absl import flags

from compdiff import cli, distributed, oracles, samplers, schedules
from compdiff.testing import min_ks_pvalue, ring_and_bar

_NUM = flags.DEFINE_integer("num", 4000, "Chains per run.", lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")
DAMPINGS = (0.0, 0.25, 0.5, 0.7, 0.9)
STEPS = (3, 10)


def main(argv: list[str]) -> None:
    distributed.initialize()
    del argv
    schedule = schedules.get("linear", 100)
    gauss = oracles.gaussian_mixture([[0.0, 0.0]], 0.2, schedule, name="gauss")
    ring, bar, product = ring_and_bar(schedule)
    reference = product.sample(jax.random.PRNGKey(7), _NUM.value)
    var_exact = float(gauss.at_level(1).covs[0, 0, 0])
    rows, t0 = [], time.time()
    for steps in STEPS:
        for damping in DAMPINGS:
            hmc = samplers.get("hmc", steps_per_level=steps, leapfrog=3, step=0.03,
                               damping=damping)
            x, _ = samplers.sample(gauss, hmc, schedule, jax.random.PRNGKey(0), _NUM.value,
                                   denoise=False)
            sq = np.asarray(x, np.float64) ** 2  # the mean is exactly 0
            var = float(sq.mean())
            z = (var - var_exact) / (sq.std() / np.sqrt(sq.size))
            y, _ = samplers.sample(ring * bar, hmc, schedule, jax.random.PRNGKey(1), _NUM.value,
                                   denoise=False)
            rows.append({"steps_per_level": steps, "damping": damping, "gauss_var": var,
                         "gauss_var_exact": var_exact, "gauss_z": float(z),
                         "product_ks_p": min_ks_pvalue(y, reference)})
            print(f"steps {steps} damping {damping}: var {var:.5f} (exact {var_exact:.5f}, "
                  f"z {z:+.1f}), ring*bar KS p {rows[-1]['product_ks_p']:.2g}", flush=True)
    print(f"\n{time.time() - t0:.0f}s\n")
    print("| steps/level | damping | Gaussian var (exact) | z | ring*bar KS p |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['steps_per_level']} | {r['damping']} | {r['gauss_var']:.5f} "
              f"({r['gauss_var_exact']:.5f}) | {r['gauss_z']:+.1f} | {r['product_ks_p']:.2g} |")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    cli.run(main)
