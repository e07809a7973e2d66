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

Architecture: ``--widen=1 --norm=none`` (the default, our network) or
``--widen=2 --norm=layernorm`` (the authors': each block's inner layer 256
wide, LayerNorm), as ``model.widen`` / ``model.norm`` in ``configs/models/toy2d.py``;
both the energy and the eps model use it.

Small batches and CPU contention (docs/cpu_contention.md): ``--small=16,256``
also times, per batch size, energy evaluations/s of a jitted scan of
dependent evaluations and of a short MALA run (median of ``--small_repeats``);
``--busy=N`` runs N busy-loop processes during the measurements
(``--busy_pin``: each holds one core; ``--busy_nice=-10``: they outrank this
process, as a host stealing the vCPU does); ``--compare`` times the small
batches quiet first, then busy, and prints busy/quiet; ``--small_only``
skips the batch-1000 suite:

    python scripts/bench_samplers.py --small=16,256 --small_only --compare \
        --busy=1 --busy_pin --busy_nice=-10
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from compdiff import benchmarking, cli, distributed, samplers, schedules
from compdiff.experiments.common import machine
from compdiff.models import loading
from compdiff.models.mlp import NORMS
from compdiff.runtime import configure_cpu
from compdiff.training import tasks
from configs.models import toy2d

_BATCH = flags.DEFINE_integer("batch", 1000, "chains per run", lower_bound=1)
_LEVELS = flags.DEFINE_integer("levels", 100, "noise levels T", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 10, "kernel steps per level", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repetitions (best is reported)")
_JSON = flags.DEFINE_string("json", None, "also write the results to this JSON file")
_WIDEN = flags.DEFINE_integer("widen", 1, "model.widen: inner width of each residual block = "
                              "widen * hidden (the authors' network: 2)")
_NORM = flags.DEFINE_enum("norm", "none", list(NORMS),
                          "model.norm (the authors' network: layernorm)")
_SMALL = flags.DEFINE_list("small", [], "also time these small batch sizes, e.g. 16,256")
_SMALL_ONLY = flags.DEFINE_bool("small_only", False, "time only the --small batches")
_SMALL_LEVELS = flags.DEFINE_integer("small_levels", 10, "levels T of the small MALA run")
_SMALL_STEPS = flags.DEFINE_integer("small_steps", 5, "kernel steps per level, small MALA run")
_SMALL_REPEATS = flags.DEFINE_integer("small_repeats", 5, "timed repetitions (median reported)")
_BUSY = flags.DEFINE_integer("busy", 0, "busy-loop processes (one core each) run while timing")
_BUSY_SECONDS = flags.DEFINE_float("busy_seconds", 300.0, "the busy loops stop after this long")
_BUSY_NICE = flags.DEFINE_integer("busy_nice", 0, "niceness of the busy loops (below 0: they "
                                  "outrank this process, like a host stealing a vCPU; needs root)")
_BUSY_PIN = flags.DEFINE_bool("busy_pin", False, "pin busy loop i to the i-th last CPU, so it "
                              "holds that core instead of moving between cores")
_COMPARE = flags.DEFINE_bool("compare", False, "with --busy: time the --small batches quiet "
                             "first, then busy, and print busy/quiet")

_SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\n" \
        "while time.monotonic() < end:\n    pass\n"


def _seconds_per_eval(fn, model, x, repeats: int, chain: int = 50) -> float:
    """Seconds per call of ``fn(model, x)``, timed over a scan of ``chain`` dependent calls."""

    @jax.jit
    def run(model, x):
        def body(x, _):
            out = fn(model, x)
            return x + 1e-6 * jax.tree_util.tree_leaves(out)[-1], None
        return jax.lax.scan(body, x, None, length=chain)[0]

    return benchmarking.best_seconds(lambda: run(model, x), repeats) / chain


class _Busy:
    """``n`` pure-Python busy loops in their own processes; stopped on exit from the block."""

    def __init__(self, n: int, seconds: float, nice: int = 0, pin: bool = False):
        self.n, self.seconds, self.nice, self.pin, self.procs = n, seconds, nice, pin, []

    def __enter__(self):
        cpus = range(os.cpu_count())  # the machine's, even when this process is pinned
        for i in range(self.n):
            proc = subprocess.Popen([sys.executable, "-c", _SPIN, str(self.seconds)])
            self.procs.append(proc)
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(proc.pid, [cpus[-1 - i % len(cpus)]] if self.pin else cpus)
            if self.nice:
                os.setpriority(os.PRIO_PROCESS, proc.pid, self.nice)
        if self.procs:
            time.sleep(0.5)  # let them start spinning
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()
        self.procs = []


def _chains(batch: int):
    """``[batch, 2]`` start points, sharded over the devices like the sampler's chains."""
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 2))
    if jax.device_count() > 1 and batch % jax.device_count() == 0:
        sharding = jax.sharding.NamedSharding(samplers.chain_mesh(),
                                              jax.sharding.PartitionSpec("chains"))
        x = jax.device_put(x, sharding)
    return x


def _time_small(energy, batches: list[int], repeats: int, chain: int = 20) -> dict:
    """Energy evaluations/s at each small batch: a jitted scan of ``chain`` dependent
    evaluations (``eval``) and a short MALA run (``mala``), medians of ``repeats``."""
    levels, steps = _SMALL_LEVELS.value, _SMALL_STEPS.value
    schedule = schedules.get("linear", levels)
    mala = samplers.get("mala", steps_per_level=steps, step=1e-3)

    @jax.jit
    def run(model, x):
        def body(x, _):
            return x + 1e-6 * model.log_prob_and_score(x, levels // 2)[1], None
        return jax.lax.scan(body, x, None, length=chain)[0]

    out = {}
    for batch in batches:
        x = _chains(batch)
        eval_seconds = benchmarking.median_seconds(lambda x=x: run(energy, x), repeats)
        mala_seconds = benchmarking.median_seconds(
            lambda b=batch: samplers.sample(energy, mala, schedule, jax.random.PRNGKey(1),
                                            b)[0], repeats)
        out[batch] = {"eval": batch * chain / eval_seconds,
                      "mala": batch * mala.nfe(levels) / mala_seconds}
    return out


def _small(energy) -> dict:
    """The ``--small`` measurement: quiet and/or with ``--busy`` loops, printed and returned."""
    batches = [int(b) for b in _SMALL.value]
    repeats, busy = _SMALL_REPEATS.value, _BUSY.value
    runs = {}
    if _COMPARE.value or not busy:
        runs["quiet"] = _time_small(energy, batches, repeats)
    if busy:
        with _Busy(busy, _BUSY_SECONDS.value, _BUSY_NICE.value, _BUSY_PIN.value):
            runs[f"busy{busy}"] = _time_small(energy, batches, repeats)
    print(f"small batches: energy evaluations/s (median of {repeats}); eval = jitted scan of "
          f"evaluations, mala = T={_SMALL_LEVELS.value} x {_SMALL_STEPS.value} steps")
    header = f"{'batch':>6s} {'kind':5s}" + "".join(f" {k:>10s}" for k in runs)
    compare = len(runs) == 2
    print(header + (f" {'busy/quiet':>10s}" if compare else ""))
    result = {}
    for batch in batches:
        for kind in ("eval", "mala"):
            row = {k: r[batch][kind] for k, r in runs.items()}
            if compare:
                row["ratio"] = row[f"busy{busy}"] / row["quiet"]
            result.setdefault(str(batch), {})[kind] = row
            print(f"{batch:6d} {kind:5s}" + "".join(f" {row[k]:10.3g}" for k in runs)
                  + (f" {row['ratio']:10.3g}" if compare else ""))
    return result


def _setting() -> dict:
    """What this process runs under: the knobs docs/cpu_contention.md compares."""
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"widen": _WIDEN.value, "norm": _NORM.value,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "device_count": jax.device_count(),
            "affinity": affinity, "busy": _BUSY.value, "busy_nice": _BUSY_NICE.value,
            "busy_pin": _BUSY_PIN.value}


def _model(param: str, schedule_levels: int):
    config = toy2d.get_config(f"dataset=ring,param={param}")
    config.schedule.num_levels = schedule_levels
    config.model.widen, config.model.norm = _WIDEN.value, _NORM.value
    network = tasks.make_network(config, dim=2)
    params = network.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32))
    return loading.build_model(config, params["params"])


def _write(results: dict) -> None:
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(results, f, indent=2)


def _suite(energy, eps, schedule, batch: int, levels: int, steps: int, repeats: int) -> dict:
    """The batch-``batch`` suite: samplers' evaluations/s, energy/eps cost, FLOP/s fractions."""
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 2))

    energy_seconds = _seconds_per_eval(lambda m, x: m.log_prob_and_score(x, 50), energy, x,
                                       repeats)
    eps_seconds = _seconds_per_eval(lambda m, x: m.score(x, 50), eps, x, repeats)
    flops_per_eval = benchmarking.flops(lambda m, x: m.log_prob_and_score(x, 50), energy, x)
    eps_flops = benchmarking.flops(lambda m, x: m.score(x, 50), eps, x)
    peak = benchmarking.matmul_flops_per_second(1024, 1024, repeats)
    mlp_roof = benchmarking.matmul_flops_per_second(batch, 128, repeats, chain=200)

    results = {
        "machine": machine(),
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
    print(f"{results['machine']}; batch {batch}, T={levels}, {steps} kernel steps/level; "
          f"network widen={_WIDEN.value} norm={_NORM.value}")
    print(f"energy/eps cost per evaluation: {results['energy_over_eps_seconds']:.2f}x time, "
          f"{results['energy_over_eps_flops']:.2f}x FLOPs; matmul 1024^3 {peak / 1e9:.1f} "
          f"GFLOP/s, matmul [{batch},128]x[128,128] {mlp_roof / 1e9:.1f} GFLOP/s")
    print(f"{'sampler':8s} {'evals/s':>12s} {'seconds':>8s} {'GFLOP/s':>8s} "
          f"{'/matmul':>8s} {'/mlp-mm':>8s}")
    for name, options in configs.items():
        sampler = samplers.get(name, **options)
        seconds = benchmarking.best_seconds(
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
    return results


def main(argv):
    applied = configure_cpu()
    distributed.initialize()
    del argv
    load = os.getloadavg()  # before this process adds to it
    batch, levels, steps, repeats = _BATCH.value, _LEVELS.value, _STEPS.value, _REPEATS.value
    schedule = schedules.get("linear", levels)
    energy, eps = _model("energy_l2", levels), _model("eps", levels)
    setting = {**_setting(), "configure_cpu": applied, "loadavg_at_start": load}
    if _SMALL_ONLY.value:
        if not _SMALL.value:
            raise app.UsageError("--small_only needs --small=BATCH[,BATCH...]")
        results = {"machine": machine(), "setting": setting}
        print(f"{results['machine']}\nsetting: {setting}")
        results["small"] = _small(energy)
        _write(results)
        return
    with _Busy(0 if _COMPARE.value else _BUSY.value, _BUSY_SECONDS.value, _BUSY_NICE.value,
               _BUSY_PIN.value):
        results = _suite(energy, eps, schedule, batch, levels, steps, repeats)
    results["setting"] = setting
    if _SMALL.value:
        print(f"setting: {setting}")
        results["small"] = _small(energy)
    _write(results)


if __name__ == "__main__":
    cli.run(main)
