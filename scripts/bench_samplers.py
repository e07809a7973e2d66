"""Sampler throughput on the 2D MLP energy model (RRR's 4 x 128 residual MLP).

For batch 1000, T = 100 levels and 10 kernel steps per level (HMC/U-HMC:
10 steps x 3 leapfrog), prints per sampler the energy-gradient evaluations
per second, the cost of one energy-model evaluation relative to one
eps-model evaluation, and the achieved FLOP/s as a fraction of a jitted f32
matmul measured in the same run (two matmuls: one large, the machine's
practical peak; one the shape of the MLP's hidden layer, the roofline this
workload can hope for). FLOPs per evaluation come from XLA's cost analysis
of one jitted ``log_prob_and_score`` (no loops, so the count is exact).

    python scripts/bench_samplers.py [--batch=1000] [--levels=100] [--steps=10] [--json=out.json]
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from compdiff import samplers, schedules, table2d, train
from configs import toy2d

_BATCH = flags.DEFINE_integer("batch", 1000, "chains per run")
_LEVELS = flags.DEFINE_integer("levels", 100, "noise levels T")
_STEPS = flags.DEFINE_integer("steps", 10, "kernel steps per level")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repetitions (best is reported)")
_JSON = flags.DEFINE_string("json", None, "also write the results to this JSON file")


def _best_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def _matmul_flops_per_second(m: int, k: int, repeats: int, chain: int = 20) -> float:
    """FLOP/s of ``chain`` dependent jitted ``[m, k] @ [k, k]`` matmuls (amortizes dispatch).

    The right factor is orthogonal, so the chained products neither blow up nor vanish.
    """
    a = jax.random.normal(jax.random.PRNGKey(0), (m, k), jnp.float32)
    b = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(1), (k, k), jnp.float32))[0]

    @jax.jit
    def run(a, b):
        return jax.lax.scan(lambda x, _: (x @ b, None), a, None, length=chain)[0]

    seconds = _best_seconds(lambda: run(a, b), repeats)
    return 2.0 * m * k * k * chain / seconds


def _seconds_per_eval(fn, model, x, repeats: int, chain: int = 50) -> float:
    """Seconds per call of ``fn(model, x)``, timed over a scan of ``chain`` dependent calls."""

    @jax.jit
    def run(model, x):
        def body(x, _):
            out = fn(model, x)
            return x + 1e-6 * jax.tree_util.tree_leaves(out)[-1], None
        return jax.lax.scan(body, x, None, length=chain)[0]

    return _best_seconds(lambda: run(model, x), repeats) / chain


def _flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def _model(param: str, schedule_levels: int):
    config = toy2d.get_config(f"dataset=ring,param={param}")
    config.schedule.num_levels = schedule_levels
    network = train.make_network(config, dim=2)
    params = network.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32))
    return train.build_model(config, params["params"])


def main(argv):
    del argv
    batch, levels, steps, repeats = _BATCH.value, _LEVELS.value, _STEPS.value, _REPEATS.value
    schedule = schedules.get("linear", levels)
    energy, eps = _model("energy_l2", levels), _model("eps", levels)
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 2))

    energy_seconds = _seconds_per_eval(lambda m, x: m.log_prob_and_score(x, 50), energy, x,
                                       repeats)
    eps_seconds = _seconds_per_eval(lambda m, x: m.score(x, 50), eps, x, repeats)
    flops_per_eval = _flops(lambda m, x: m.log_prob_and_score(x, 50), energy, x)
    eps_flops = _flops(lambda m, x: m.score(x, 50), eps, x)
    peak = _matmul_flops_per_second(1024, 1024, repeats)
    mlp_roof = _matmul_flops_per_second(batch, 128, repeats, chain=200)

    results = {
        "machine": table2d.machine(),
        "batch": batch, "levels": levels, "steps_per_level": steps,
        "energy_over_eps_seconds": energy_seconds / eps_seconds,
        "energy_over_eps_flops": flops_per_eval / eps_flops,
        "flops_per_energy_eval": flops_per_eval,
        "matmul_1024_gflops": peak / 1e9, "matmul_mlp_shape_gflops": mlp_roof / 1e9,
        "samplers": {},
    }
    configs = {
        "reverse": dict(),
        "ula": dict(steps_per_level=steps, step=1e-3),
        "mala": dict(steps_per_level=steps, step=1e-3),
        "uhmc": dict(steps_per_level=steps, leapfrog=3, step=1e-2),
        "hmc": dict(steps_per_level=steps, leapfrog=3, step=1e-2),
    }
    print(f"{results['machine']}; batch {batch}, T={levels}, {steps} kernel steps/level")
    print(f"energy/eps cost per evaluation: {results['energy_over_eps_seconds']:.2f}x time, "
          f"{results['energy_over_eps_flops']:.2f}x FLOPs; matmul 1024^3 {peak / 1e9:.1f} "
          f"GFLOP/s, matmul [{batch},128]x[128,128] {mlp_roof / 1e9:.1f} GFLOP/s")
    print(f"{'sampler':8s} {'evals/s':>12s} {'seconds':>8s} {'GFLOP/s':>8s} "
          f"{'/matmul':>8s} {'/mlp-mm':>8s}")
    for name, options in configs.items():
        sampler = samplers.get(name, **options)
        seconds = _best_seconds(
            lambda s=sampler: samplers.sample(energy, s, schedule, jax.random.PRNGKey(1),
                                              batch)[0], repeats)
        evals = sampler.nfe(levels) * batch  # per-sample gradient evaluations
        flops = sampler.nfe(levels) * flops_per_eval / seconds
        row = {"evals_per_second": evals / seconds, "seconds": seconds,
               "gflops": flops / 1e9, "fraction_of_matmul": flops / peak,
               "fraction_of_mlp_matmul": flops / mlp_roof, "nfe": sampler.nfe(levels)}
        results["samplers"][name] = row
        print(f"{name:8s} {row['evals_per_second']:12.3g} {seconds:8.3f} {row['gflops']:8.2f} "
              f"{row['fraction_of_matmul']:8.3f} {row['fraction_of_mlp_matmul']:8.3f}")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
