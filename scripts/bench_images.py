"""Throughput of the CLEVR position-conditional UNet: composed gradients and training.

Prints, for the config's UNet (random, non-zero parameters: the zero-initialized
output convs are perturbed, so the network computes something):

1. two rooflines measured in the same run: a jitted f32 ``1024 x 1024 @ 1024 x 1024``
   matmul and a jitted 3x3 NHWC conv of the UNet's first-level shape
   (``train batch x H x W x channels -> channels``), in GFLOP/s;
2. composed-gradient evaluations/s of ``classifier_free_product(model, [c_1..c_K],
   scale=1)`` for ``K = 1..5`` random positions in ``[0.2, 0.8]^2``, at ``--batch``
   images: ``log_prob_and_score`` of the energy model (``energy_dae``) and ``score``
   of the ``eps`` model, (a) batched (one network call on the ``[(K+1) B]`` stacked
   batch, :meth:`DiffusionModel.evaluate_together`) and (b) separate (the same
   product with ``groups=()``: ``K + 1`` network calls);
3. training images/s of ``train._train_step`` for ``eps`` and ``energy_dae`` at the
   config's batch size, the energy/eps cost ratio, and the achieved GFLOP/s (FLOPs
   from XLA's cost analysis) next to the two rooflines.

Each time is the median of ``--repeats`` calls after a warm-up call (compile
excluded), each call ended by ``block_until_ready``; the batched and separate
compositions of one ``K`` are timed in turn within every repeat, so that load from
other processes falls on both alike. Both are one jitted program each, so the
comparison holds no Python dispatch: only one large network call against ``K + 1``
smaller ones inside XLA.

    python scripts/bench_images.py --config=configs/models/clevr.py:cpu [--batch=32] \
        [--repeats=5] [--ks=1,2,3,4,5] [--out=bench.json]

``--config.model.channels=16`` etc. override the config as usual.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import config_flags

from compdiff import benchmarking, cli, compose, distributed, train
from compdiff.experiments.common import cpu_name, machine
from compdiff.models.diffusion import DiffusionModel, classifier_free_product
from compdiff.models.loading import build_model
from compdiff.runtime import configure_cpu
from compdiff.training import tasks
from compdiff.training.state import init_state

_CONFIG = config_flags.DEFINE_config_file("config", "configs/models/clevr.py:cpu",
                                          "Image diffusion config file[:variant].")
_BATCH = flags.DEFINE_integer("batch", 32, "images per composed evaluation", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per measurement (median reported)",
                                lower_bound=1)
_KS = flags.DEFINE_list("ks", ["1", "2", "3", "4", "5"], "numbers of composed conditions K")
_OUT = flags.DEFINE_string("out", None, "also write the results to this JSON file")

IMAGE_SHAPE = (16, 16, 3)  # the image_shape of configs/models/clevr.py's 16 px builder configs
PERTURB = 0.05  # scale of the normal noise added to every parameter


# --- timing ---------------------------------------------------------------------------------
def _level(num_levels: int) -> int:
    """The level ``t`` of the composed evaluations (their cost does not depend on it)."""
    return max(1, num_levels // 2)


def _conv_gflops(shape: tuple[int, int, int, int], repeats: int, chain: int = 10) -> float:
    """GFLOP/s of ``chain`` dependent jitted 3x3 'SAME' NHWC convs ``C -> C`` of ``shape``."""
    b, h, w, c = shape
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    k = jax.random.normal(jax.random.key(1), (3, 3, c, c), jnp.float32) / (3.0 * c**0.5)

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    run = jax.jit(lambda x, k: jax.lax.scan(lambda y, _: (conv(y, k), None), x, None,
                                            length=chain)[0])
    flops = 2.0 * b * h * w * c * c * 9 * chain
    return flops / benchmarking.median_seconds(lambda: run(x, k), repeats) / 1e9


# --- models --------------------------------------------------------------------------------
def _image_config(config: ml_collections.ConfigDict, param: str) -> ml_collections.ConfigDict:
    """An unlocked copy of ``config`` with the image shape/dimension set and ``param``."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.image_shape = list(IMAGE_SHAPE)
    c.model.dim = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
    c.model.parameterization = param
    return c


def _perturbed(params, key):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [p + PERTURB * jax.random.normal(k, p.shape, p.dtype)
                                        for p, k in zip(leaves, keys)])


def _model(config: ml_collections.ConfigDict, param: str) -> DiffusionModel:
    c = _image_config(config, param)
    state = init_state(c, tasks.make_network(c), jax.random.key(0))
    return build_model(c, _perturbed(state.params, jax.random.key(1)))


def _separately(density: compose.Density) -> compose.Density:
    """The same composition with every leaf its own network call (no shared groups)."""
    if isinstance(density, compose.Product | compose.Mixture):
        return density.replace(children=tuple(_separately(c) for c in density.children),
                               groups=())
    return density


# --- 2. composed gradients -----------------------------------------------------------------
def _composed(model: DiffusionModel, ks: list[int], batch: int, repeats: int) -> list[dict]:
    level = _level(model.schedule.num_levels)
    fn = jax.jit((lambda d, x: d.log_prob_and_score(x, level)) if model.has_log_prob
                 else (lambda d, x: d.score(x, level)))
    x = jax.random.normal(jax.random.key(2), (batch, model.dim), jnp.float32)
    rows = []
    for k in ks:
        positions = jax.random.uniform(jax.random.key(10 + k), (k, 2), minval=0.2, maxval=0.8)
        batched = classifier_free_product(model, list(positions), scale=1.0)
        assert batched.groups == (tuple(range(k + 1)),), batched.groups
        separate = _separately(batched)
        row = {"k": k, "network_calls_separate": k + 1}
        both = benchmarking.median_seconds_interleaved(
            [lambda d=d: fn(d, x) for d in (batched, separate)], repeats)
        for name, seconds in zip(("batched", "separate"), both):
            row[name] = {"seconds": seconds, "composed_per_s": batch / seconds,
                         "image_cond_evals_per_s": (k + 1) * batch / seconds}
        row["speedup"] = row["separate"]["seconds"] / row["batched"]["seconds"]
        rows.append(row)
        print(f"  {model.parameterization} K={k}: batched {row['batched']['seconds']:.4f}s "
              f"separate {row['separate']['seconds']:.4f}s speedup {row['speedup']:.2f}",
              flush=True)
    return rows


# --- 3. training ---------------------------------------------------------------------------
def _training(config: ml_collections.ConfigDict, param: str, repeats: int) -> dict:
    c = _image_config(config, param)
    network = tasks.make_network(c)
    state = init_state(c, network, jax.random.key(0))
    state = state.replace(params=_perturbed(state.params, jax.random.key(1)))
    b = c.train.batch_size
    batch = {"x": jax.random.normal(jax.random.key(3), (b, network.dim), jnp.float32),
             "cond": jax.random.uniform(jax.random.key(4), (b, 2), jnp.float32)}
    schedule = tasks.make_schedule(c)
    sharding = NamedSharding(Mesh(jax.devices(), ("batch",)), PartitionSpec("batch"))
    kwargs = dict(network=network, loss=tasks.DenoisingLoss(param, c.train.cond_dropout),
                  batch_size=b, lr=c.train.lr, grad_clip=c.train.grad_clip,
                  ema_decay=c.train.ema_decay, sharding=sharding)
    key = jax.random.key(5)
    flops = benchmarking.compiled_flops(train._train_step.lower(state, key, None, schedule, batch,
                                                **kwargs).compile())
    holder = [state]  # the state is donated: always carry on with the returned one

    def step():
        holder[0], loss = train._train_step(holder[0], key, None, schedule, batch, **kwargs)
        return holder[0], loss

    seconds = benchmarking.median_seconds(step, repeats)
    return {"batch_size": b, "seconds_per_step": seconds, "images_per_s": b / seconds,
            "flops_per_step": flops, "gflops": flops / seconds / 1e9}


# --- report --------------------------------------------------------------------------------
def _table(results: dict) -> str:
    r, lines = results, []
    lines.append(f"machine: {r['machine']}")
    lines.append(f"cpu: {r['cpu']}; {r['cores']} cores visible; jax {r['jax']}; "
                 f"device {r['device']}; loadavg at start {r['loadavg_at_start']}")
    m = r["model"]
    lines.append(f"model: UNet {m['image_shape']}, channels {m['channels']}, channel_mult "
                 f"{m['channel_mult']}, {m['num_res_blocks']} res block(s), attention at "
                 f"{m['attention_resolutions']}, cond_dim {m['cond_dim']}, T={m['num_levels']}; "
                 f"composed at t={r['level']}, batch {r['batch']}, median of {r['repeats']}")
    lines.append("")
    lines.append("| roofline | shape | GFLOP/s |")
    lines.append("|---|---|---:|")
    lines.append(f"| matmul f32 | 1024x1024 @ 1024x1024 | {r['roofline']['matmul_gflops']:.1f} |")
    lines.append(f"| conv 3x3 f32 | {r['roofline']['conv_shape']} -> "
                 f"{r['roofline']['conv_shape'][-1]} | {r['roofline']['conv_gflops']:.1f} |")
    lines.append("")
    lines.append("| model | K | calls (sep.) | batched s/eval | separate s/eval | batched "
                 "composed grads/s | separate composed grads/s | batched img-cond evals/s | "
                 "separate img-cond evals/s | speedup batched/separate |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for param, rows in r["composed"].items():
        for row in rows:
            bt, sp = row["batched"], row["separate"]
            lines.append(f"| {param} | {row['k']} | {row['network_calls_separate']} | "
                         f"{bt['seconds']:.4f} | {sp['seconds']:.4f} | "
                         f"{bt['composed_per_s']:.1f} | {sp['composed_per_s']:.1f} | "
                         f"{bt['image_cond_evals_per_s']:.1f} | "
                         f"{sp['image_cond_evals_per_s']:.1f} | {row['speedup']:.2f} |")
    lines.append("")
    lines.append("| training step | batch | s/step | images/s | GFLOP/step | GFLOP/s | "
                 "/ conv roof | / matmul roof |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for param, t in r["training"].items():
        lines.append(f"| {param} | {t['batch_size']} | {t['seconds_per_step']:.4f} | "
                     f"{t['images_per_s']:.1f} | {t['flops_per_step'] / 1e9:.2f} | "
                     f"{t['gflops']:.1f} | {t['fraction_of_conv']:.2f} | "
                     f"{t['fraction_of_matmul']:.2f} |")
    tr = r["training"]
    lines.append("")
    lines.append(f"energy_dae / eps training cost: {r['energy_over_eps_seconds']:.2f}x time, "
                 f"{tr['energy_dae']['flops_per_step'] / tr['eps']['flops_per_step']:.2f}x "
                 f"FLOPs; wall time {r['wall_seconds']:.0f} s")
    return "\n".join(lines)


def main(argv):
    del argv
    configure_cpu()
    distributed.initialize()
    wall = time.perf_counter()
    load = os.getloadavg()
    config, batch, repeats = _CONFIG.value, _BATCH.value, _REPEATS.value
    ks = [int(k) for k in _KS.value]
    m = config.model
    results = {
        "machine": machine(), "cpu": cpu_name(), "cores": os.cpu_count(),
        "jax": jax.__version__, "device": str(jax.devices()[0]),
        "loadavg_at_start": [round(v, 2) for v in load], "batch": batch, "repeats": repeats,
        "level": _level(config.schedule.num_levels),
        "model": {"image_shape": list(IMAGE_SHAPE), "channels": m.channels,
                  "channel_mult": list(m.channel_mult), "num_res_blocks": m.num_res_blocks,
                  "attention_resolutions": list(m.attention_resolutions),
                  "cond_dim": m.cond_dim, "num_levels": config.schedule.num_levels},
    }
    conv_shape = (config.train.batch_size, IMAGE_SHAPE[0], IMAGE_SHAPE[1], m.channels)
    print("rooflines ...", flush=True)
    results["roofline"] = {"matmul_gflops": benchmarking.matmul_flops_per_second(
        1024, 1024, repeats, chain=10, timer=benchmarking.median_seconds) / 1e9,
                           "conv_shape": list(conv_shape),
                           "conv_gflops": _conv_gflops(conv_shape, repeats)}
    print("composed gradients ...", flush=True)
    results["composed"] = {param: _composed(_model(config, param), ks, batch, repeats)
                           for param in ("energy_dae", "eps")}
    print("training ...", flush=True)
    results["training"] = {param: _training(config, param, repeats)
                           for param in ("eps", "energy_dae")}
    for t in results["training"].values():
        t["fraction_of_conv"] = t["gflops"] / results["roofline"]["conv_gflops"]
        t["fraction_of_matmul"] = t["gflops"] / results["roofline"]["matmul_gflops"]
    results["energy_over_eps_seconds"] = (results["training"]["energy_dae"]["seconds_per_step"]
                                          / results["training"]["eps"]["seconds_per_step"])
    results["wall_seconds"] = time.perf_counter() - wall
    print()
    print(_table(results))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    cli.run(main)
