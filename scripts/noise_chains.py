"""Which reverse-diffusion chains of an image model end as noise, and where they go astray.

    python scripts/noise_chains.py --workdir=runs/guidance_cpu/digits/models/energy \
        [--num=200] [--seed=0] [--out=noise_chains.json]

Runs plain reverse diffusion of the (unconditional) model in ``--workdir`` for ``--num``
chains, keeps every level's ``|x|`` and ``sigma_t |score|`` (the norm of the predicted
noise, about ``sqrt(d)`` wherever the model is right), counts the final images the
detector calls noise (:mod:`compdiff.evaluation.noise_images`), and prints both norms per
level for the noise chains against the others. A model whose predicted noise shrinks on
some chains (a flat region of the energy) shows it here; a sampler fault would not.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from compdiff import cli
from compdiff.data import images
from compdiff.evaluation import noise_images
from compdiff.experiments import common
from compdiff.models.loading import load_model, load_params
from compdiff.samplers import kernels

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of a trained image diffusion model.")
_NUM = flags.DEFINE_integer("num", 200, "Chains.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUT = flags.DEFINE_string("out", None, "Write JSON here, and Markdown beside it.")
flags.mark_flags_as_required(["workdir"])
SHOWN_LEVELS = (50, 20, 10, 5, 2, 1)


def trace(workdir: str, num: int, seed: int) -> dict:
    config = load_params(workdir)[0]
    model = load_model(workdir)
    shape = images.ImageSource.from_config(config.data, split="test").image_shape
    schedule = model.schedule

    levels = jnp.arange(schedule.num_levels, 0, -1)

    @jax.jit
    def run(x, key):
        def level(x, t):
            grad = model.score(x, t)
            state = kernels.ChainState(x=x, v=x, log_prob=jnp.zeros(x.shape[:1]), grad=grad)
            norms = (jnp.linalg.norm(x, axis=-1),
                     schedule.sigma[t] * jnp.linalg.norm(grad, axis=-1))
            return kernels.reverse_step(state, jax.random.fold_in(key, t), t, schedule), norms

        return jax.lax.scan(level, x, levels)  # one compiled loop; norms stacked per level

    key = jax.random.PRNGKey(seed)
    x, (x_norms, eps_norms) = run(jax.random.normal(key, (num, model.dim)), key)
    # row i of the stacked norms is level T - i
    per_level = {int(t): (np.asarray(a), np.asarray(b))
                 for t, a, b in zip(np.asarray(levels), x_norms, eps_norms)}
    final = images.to_uint8(np.asarray(x), shape)
    noise = noise_images.is_noise(final)
    rows = []
    for t in (t for t in SHOWN_LEVELS if t <= schedule.num_levels):
        x_norm, eps_norm = per_level[t]
        rows.append({"level": t, **{
            f"{name}_{group}": (float(a[mask].mean()) if mask.any() else None)
            for name, a in (("x_norm", x_norm), ("eps_norm", eps_norm))
            for group, mask in (("noise", noise), ("others", ~noise))}})
    return {"workdir": os.path.abspath(workdir), "num": num, "seed": seed,
            "noise": int(noise.sum()), "sqrt_dim": float(np.sqrt(model.dim)), "rows": rows}


def markdown(result: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"Model `{result['workdir']}`: {result['noise']} of {result['num']} reverse-diffusion "
             f"chains end as noise (seed {result['seed']}; sqrt(d) = {result['sqrt_dim']:.1f}).",
             "", "| level | predicted-noise norm, noise chains | others | x norm, noise chains "
             "| others |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['level']} | {fmt(r['eps_norm_noise'])} | {fmt(r['eps_norm_others'])} "
                     f"| {fmt(r['x_norm_noise'])} | {fmt(r['x_norm_others'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    cli.start(argv)
    result = trace(_WORKDIR.value, _NUM.value, _SEED.value)
    common.report(result, markdown(result), _OUT.value)


if __name__ == "__main__":
    cli.run(main)
