"""Does a text-conditioned generator use its caption? Denoising loss under three conditions.

    python scripts/caption_gap.py --workdir=runs/text2image_cpu/models/generator

On ``--num`` test scenes of the run's ``captioned_scenes`` config, the diffusion loss (the
training objective, same levels and noise for every condition) with the caption of an
object in the image (``true``), the caption of a (shape, colour) pair absent from it
(``absent``) and the null condition (``null``). A model that reads its caption has
``absent - true`` well above zero; ``null - true`` alone only says that some caption helps.
Prints one JSON line (means, and ``absent - true`` with its standard error over images).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from compdiff import cli
from compdiff.data import captioned_scenes as cs
from compdiff.data import examples
from compdiff.data import images as image_data
from compdiff.models import conditioning
from compdiff.models.diffusion import predict
from compdiff.models.loading import load_params
from compdiff.training import tasks

_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of a text-conditioned run.")
_NUM = flags.DEFINE_integer("num", 512, "Test scenes.")
_DRAWS = flags.DEFINE_integer("draws", 4, "Noise draws per scene.")
flags.mark_flags_as_required(["workdir"])


def caption_gap(workdir: str, num: int = 512, draws: int = 4, seed: int = 0) -> dict:
    config, network, params = load_params(workdir)
    if config.data.get("source") != "captioned_scenes":
        raise ValueError(f"{workdir} was not trained on captioned_scenes")
    schedule = tasks.make_schedule(config)
    source = cs.data_source(config.data.builder_config, "test", config.data.data_dir)
    table = examples.caption_embeddings(config.model.text_encoder)
    rng = np.random.default_rng(seed)
    records = [source[i] for i in range(min(num, len(source)))]
    x0 = jnp.asarray(np.stack([image_data.to_unit_range(r["image"]).reshape(-1)
                               for r in records]))

    def absent(record) -> int:
        present = examples.present_concepts(record)
        pairs = [(s, c) for s in range(len(cs.SHAPES)) for c in range(len(cs.COLOURS))
                 if (s, c) not in present]
        return cs.caption_id(*pairs[rng.integers(len(pairs))])

    conditions = {
        "true": (table[[examples.image_caption(r, rng)["caption_id"] for r in records]], True),
        "absent": (table[[absent(r) for r in records]], True),
        "null": (table[np.zeros(len(records), int)], False)}

    def apply(p, x, t, c):
        return network.apply({"params": p}, x, t, c)

    @jax.jit
    def per_image_loss(value, present, key):
        k_t, k_eps = jax.random.split(key)
        t = jax.random.randint(k_t, (x0.shape[0],), 1, schedule.num_levels + 1)
        eps = jax.random.normal(k_eps, x0.shape)
        x_t = jnp.sqrt(schedule.abar[t])[:, None] * x0 + schedule.sigma[t][:, None] * eps
        cond = conditioning.Conditions(value=value, present=jnp.full((x0.shape[0],), present))
        _, eps_hat = predict(apply, params, config.model.parameterization, x_t, t, cond)
        return jnp.sum((eps - eps_hat) ** 2, axis=-1)

    loss = {name: np.mean([np.asarray(per_image_loss(jnp.asarray(v), p, jax.random.key(k)))
                           for k in range(draws)], axis=0)
            for name, (v, p) in conditions.items()}
    gap = loss["absent"] - loss["true"]
    return {**{f"{k}_loss": float(v.mean()) for k, v in loss.items()},
            "absent_minus_true": float(gap.mean()),
            "absent_minus_true_se": float(gap.std() / np.sqrt(len(gap))), "num": len(gap)}


def main(argv: list[str]) -> None:
    cli.start(argv)
    print(json.dumps(caption_gap(_WORKDIR.value, _NUM.value, _DRAWS.value)))


if __name__ == "__main__":
    cli.run(main)
