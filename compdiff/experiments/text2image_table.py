"""RRR section 5.4 at CPU scale: prompt compositions of a text-conditioned energy UNet.

One text-conditioned energy model (``configs/text2image.py``) is prompted with compositions
of captions of :mod:`compdiff.data.captioned_scenes` (:mod:`compdiff.prompts`), every
composition type sampled by every sampler, and every image judged by a separately trained
concept classifier (``configs/text2image_classifier.py``, scored first on held-out renders,
:func:`compdiff.concepts.evaluate`). An image is correct when every AND-ed concept is
present, every NOT-ed one absent and, of an OR group, at least one present
(:func:`compdiff.concepts.prompt_correct`).

Composition types (``config.compositions``): one concept (the model works before it
composes), 2 and 3 ANDs, AND NOT, OR, and held-out pairs (one caption naming a
``(shape, colour)`` pair that the generator's training split never showed). Samplers
(``config.samplers``, names of :data:`compdiff.text2image.IMAGE_SAMPLERS`, ``+smc`` for
SMC): every MCMC row takes one reverse step into each level and one kernel step, 2 network
evaluations per level, so the MCMC rows are at equal NFE; ``reverse`` takes 1 per level (a
reverse row at their NFE needs a model on a twice-longer schedule, which the CPU budgets
leave out; the guidance table's ``reverse_equal`` does that for classifier guidance).
Every network evaluation of a prompt is one batched call over its conditions.

Model error is separated from sampler error by numbers: the judge's own held-out accuracy
(classifier error), single-concept accuracy of plain reverse diffusion (model error), and,
per row, the fraction of a prompt's individual requirements met (``concept_accuracy``), so a
multi-concept failure shows whether concepts are missing one at a time or the product
fails as a whole.

Work directory::

    models/{generator,judge}/
    samples/<composition>_<k>_<sampler>.npz     x: uint8 NHWC, prompt (spaces as _)
    figures/<composition>.png                   one row per sampler, first prompt of the type
    text2image_table.json, text2image_table.md
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from compdiff import (
    concepts,
    image_grids,
    metrics,
    prompts,
    samplers,
    table2d,
    text2image,
    train,
)
from compdiff.data import images as image_data

MODELS = ("generator", "judge")


def train_models(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (or resumes, or reuses) the generator and the judge; seconds per model."""
    seconds = {}
    for kind in MODELS:
        t0 = time.time()
        logging.info("text2image_table: training %s", kind)
        train.train(config.models[kind], os.path.join(workdir, "models", kind))
        seconds[kind] = time.time() - t0
    return seconds


def judge_accuracy(config: ml_collections.ConfigDict, presence: concepts.PresenceFn) -> dict:
    """The judge on held-out renders (the ``test`` split of its data)."""
    source = image_data.ImageSource.from_config(config.models.judge.data, split="test")
    num = min(len(source.source), config.num_judge_images)
    return concepts.evaluate(presence, [source.source[i] for i in range(num)])


def cell(model, encoder, presence, prompt: str, sampler: str, scale: float, num: int,
         key: jax.Array) -> tuple[dict, np.ndarray]:
    target = text2image.prompt_density(model, encoder, prompt, scale)
    t0 = time.time()
    x, stats = samplers.sample(target, text2image.image_sampler(sampler), model.schedule, key,
                               num, mesh=None)
    x = np.asarray(x)
    seconds = time.time() - t0
    scores = concepts.score_prompt(presence, x, prompts.parse_prompt(prompt))
    row = {"prompt": prompt, "sampler": sampler, **scores,
           "nfe": int(stats.nfe), "seconds": seconds, "diverged": int(stats.diverged)}
    return row, x


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    t_start = time.time()
    workdir = os.path.abspath(workdir)
    for kind in MODELS:
        config.models[kind].data.data_dir = config.data_dir
    train_seconds = train_models(config, workdir)
    presence = concepts.load_presence(os.path.join(workdir, "models", "judge"))
    judge = judge_accuracy(config, presence)
    logging.info("text2image_table: judge held-out accuracy %.3f (all concepts %.3f)",
                 judge["accuracy"], judge["all_concepts_accuracy"])
    model, encoder = text2image.load(os.path.join(workdir, "models", "generator"))
    shape = text2image.image_shape(os.path.join(workdir, "models", "generator"))
    key = jax.random.key(config.seed)
    rows = []
    for c, comp in enumerate(config.compositions):
        grid = []
        for k, prompt in enumerate(comp.prompts):
            for s, sampler in enumerate(config.samplers):
                row, x = cell(model, encoder, presence, prompt, sampler, config.scale,
                              config.num_images, jax.random.fold_in(key, 10_000 * c + 100 * k + s))
                rows.append({"composition": comp.name, "model": "energy", **row})
                images = image_data.to_uint8(x, shape)
                _save(workdir, f"{_slug(comp.name)}_{k}_{sampler}", images, prompt)
                if k == 0:
                    grid.append(images[:8])
                logging.info("%-14s %-10s accuracy %.3f (concepts %.3f) nfe %d %.1fs: %s",
                             comp.name, sampler, row["accuracy"], row["concept_accuracy"],
                             row["nfe"], row["seconds"], prompt)
        image_grids.save_grid(np.concatenate(grid), os.path.join(
            workdir, "figures", f"{_slug(comp.name)}.png"), ncols=len(grid[0]),
            titles=[s if i == 0 else "" for s in config.samplers for i in range(len(grid[0]))])
    result = {"rows": rows, "classifier_accuracy": judge["accuracy"], "classifier": judge,
              "train_seconds": train_seconds, "machine": table2d.machine(),
              "config": json.loads(config.to_json()), "wall_seconds": time.time() - t_start}
    with open(os.path.join(workdir, "text2image_table.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(workdir, "text2image_table.md"), "w") as f:
        f.write(markdown(result))
    logging.info("text2image_table done in %.0fs: %s", result["wall_seconds"], workdir)
    return result


def _slug(name: str) -> str:
    """A composition type as a file name: ``"held-out pair"`` -> ``"held-out_pair"``."""
    return name.replace(" ", "_")


def _save(workdir: str, name: str, images: np.ndarray, prompt: str) -> None:
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    np.savez_compressed(os.path.join(workdir, "samples", f"{name}.npz"), x=images,
                        prompt=prompt)


def summary(result: dict) -> list[dict]:
    """Accuracy per (composition, sampler), averaged over the composition's prompts."""
    out = []
    for comp in dict.fromkeys(r["composition"] for r in result["rows"]):
        for sampler in dict.fromkeys(r["sampler"] for r in result["rows"]):
            at = [r for r in result["rows"] if (r["composition"], r["sampler"]) == (comp, sampler)]
            if at:
                out.append({"composition": comp, "sampler": sampler,
                            "accuracy": float(np.mean([r["accuracy"] for r in at])),
                            "concept_accuracy": float(np.mean([r["concept_accuracy"]
                                                               for r in at])),
                            "num_images": len(at) * result["config"]["num_images"],
                            "nfe": at[0]["nfe"], "seconds": float(sum(r["seconds"] for r in at))})
    return out


MULTI_CONCEPT = ("2 AND", "3 AND", "AND NOT", "OR")


def claims(result: dict) -> list[str]:
    """RRR's claim (HMC on the energy model beats reverse diffusion on multi-concept prompts)
    and the numbers that separate model, classifier and sampler error."""
    table = {(s["composition"], s["sampler"]): s for s in summary(result)}
    lines = [f"Judge (concept classifier) on held-out renders: {result['classifier_accuracy']:.3f}"
             f" on hard balanced queries, {result['classifier']['all_concepts_accuracy']:.3f} "
             "over every concept of every image (classifier error)."]
    single = table.get(("1 concept", "reverse"))
    if single:
        lines.append(f"Model before composition: one concept by reverse diffusion "
                     f"{single['accuracy']:.2f} (model error {1 - single['accuracy']:.2f}).")
    pooled = {}
    for sampler in ("reverse", "hmc"):
        cells = [table[(c, sampler)] for c in MULTI_CONCEPT if (c, sampler) in table]
        if cells:
            n = sum(c["num_images"] for c in cells)
            pooled[sampler] = (sum(c["accuracy"] * c["num_images"] for c in cells) / n, n)
    if len(pooled) == 2:
        (hmc, n), (rev, _) = pooled["hmc"], pooled["reverse"]
        lines.append(f"Multi-concept prompts ({', '.join(MULTI_CONCEPT)}, pooled over "
                     f"{n} images each): HMC {hmc:.2f} against reverse {rev:.2f}; HMC beats "
                     f"reverse diffusion: {metrics.proportion_verdict(hmc, rev, n)}.")
    return lines


def markdown(result: dict) -> str:
    lines = ["| composition | sampler | accuracy | concepts met | images | NFE | seconds |",
             "|---" * 7 + "|"]
    for s in summary(result):
        lines.append(f"| {s['composition']} | {s['sampler']} | {s['accuracy']:.2f} | "
                     f"{s['concept_accuracy']:.2f} | {s['num_images']} | {s['nfe']} | "
                     f"{s['seconds']:.0f} |")
    lines += [""] + claims(result)
    lines.append("\nPrompts: " + "; ".join(
        f"{c['name']}: " + " | ".join(c["prompts"]) for c in result["config"]["compositions"])
        + ".")
    train_s = sum(result["train_seconds"].values())
    lines.append(f"\nMachine: {result['machine']}. Wall time {result['wall_seconds']:.0f}s "
                 f"(training {train_s:.0f}s).")
    return "\n".join(lines) + "\n"
