"""RRR section 5.4 at CPU scale: prompt compositions of a text-conditioned energy UNet.

One text-conditioned energy model (``configs/models/text2image.py``) is prompted with compositions
of captions of :mod:`compdiff.data.captioned_scenes` (:mod:`compdiff.prompts`), every
composition type sampled by every sampler (rows of ``configs/common.py``, labels from the
sampler registry), and every image judged by a separately trained
concept classifier (``configs/models/text2image_classifier.py``, scored first on held-out renders,
:func:`compdiff.evaluation.concepts.evaluate`). An image is correct when every AND-ed concept is
present, every NOT-ed one absent and, of an OR group, at least one present
(:func:`compdiff.evaluation.concepts.prompt_correct`).

Composition types (``config.compositions``): one concept (the model works before it
composes), 2 and 3 ANDs, AND NOT, OR, and held-out pairs (one caption naming a
``(shape, colour)`` pair that the generator's training split never showed). Samplers
(``config.samplers``): every MCMC row takes one reverse step into each level and one
kernel step, 2 network evaluations per level, so the MCMC rows are at equal NFE;
``reverse`` takes 1 per level (a reverse row at their NFE needs a model on a twice-longer
schedule, which the CPU budgets leave out; the guidance table's ``reverse_equal`` does
that for classifier guidance).
Every network evaluation of a prompt is one batched call over its conditions. Prompts of one
shape share one compiled sampler; each row records its sampler compiles and their XLA
seconds (``compiles``, ``compile_seconds``), and the notes say what one compile per cell
would cost (:func:`compile_sharing`).

Paired: every sampler of a prompt samples from one key, so image ``i`` of every sampler
starts from the same noise; the claim (HMC beats reverse diffusion on multi-concept
prompts) is tested on the per-image outcomes with the exact McNemar test
(:mod:`compdiff.experiments.paired`).

Model error is separated from sampler error by numbers: the judge's own held-out accuracy
(classifier error), single-concept accuracy of plain reverse diffusion (model error), and,
per row, the fraction of a prompt's individual requirements met (``concept_accuracy``), so a
multi-concept failure shows whether concepts are missing one at a time or the product
fails as a whole.

Work directory::

    models/{generator,judge}/
    samples/<composition>_<k>_<sampler>.npz     x: uint8 NHWC, prompt (spaces as _)
    figures/<composition>.png                   one row per sampler, first prompt of the type
    text2image_table.json, text2image_table.md   (the protocol writes them)
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from compdiff import image_grids, prompts, samplers, text2image
from compdiff.data import images as image_data
from compdiff.evaluation import concepts, noise_images
from compdiff.experiments import common, paired

MODELS = ("generator", "judge")


def judge_accuracy(config: ml_collections.ConfigDict, presence: concepts.PresenceFn) -> dict:
    """The judge on held-out renders (the ``test`` split of its data)."""
    source = image_data.ImageSource.from_config(config.models.judge.data, split="test")
    num = min(len(source.source), config.num_judge_images)
    return concepts.evaluate(presence, [source.source[i] for i in range(num)])


def cell(model, encoder, presence, prompt: str, sampler: samplers.Sampler, label: str,
         scale: float, num: int, key: jax.Array) -> tuple[dict, np.ndarray]:
    target = text2image.prompt_density(model, encoder, prompt, scale)
    with common.compile_seconds() as compiles:  # 0 or 1: prompts of one shape share one
        t0 = time.time()
        x, stats = samplers.sample(target, sampler, model.schedule, key, num, mesh=None)
        x = np.asarray(x)
        seconds = time.time() - t0
    tree = prompts.parse_prompt(prompt)
    scores = concepts.score_prompt(presence, x, tree)
    hits = concepts.prompt_correct(presence, x.reshape(len(x), -1),
                                   *concepts.requirements(tree))
    row = {"prompt": prompt, "sampler": label, **scores,
           "correct": np.asarray(hits).astype(int).tolist(),
           "nfe": int(stats.nfe), "seconds": seconds, "diverged": int(stats.diverged),
           "compiles": len(compiles), "compile_seconds": float(sum(compiles))}
    return row, x


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Every (composition, prompt, sampler) row and the judge's own accuracy."""
    workdir = os.path.abspath(workdir)
    for kind in MODELS:
        config.models[kind].data.data_dir = config.data_dir
    train_seconds = common.train_models({f"models/{k}": config.models[k] for k in MODELS},
                                        workdir)
    presence = concepts.load_presence(os.path.join(workdir, "models", "judge"))
    judge = judge_accuracy(config, presence)
    logging.info("text2image_table: judge held-out accuracy %.3f (all concepts %.3f)",
                 judge["accuracy"], judge["all_concepts_accuracy"])
    model, encoder = text2image.load(os.path.join(workdir, "models", "generator"))
    shape = text2image.image_shape(os.path.join(workdir, "models", "generator"))
    key = jax.random.key(config.seed)
    labels = [common.row_label(r) for r in config.samplers]
    rows = []
    for c, comp in enumerate(config.compositions):
        grid = []
        for k, prompt in enumerate(comp.prompts):
            prompt_key = jax.random.fold_in(key, 10_000 * c + 100 * k)  # shared: paired rows
            for spec, label in zip(config.samplers, labels):
                row, x = cell(model, encoder, presence, prompt, common.make_sampler(spec), label,
                              config.scale, config.num_images, prompt_key)
                images = image_data.to_uint8(x, shape)
                noise = noise_images.is_noise(images)  # a noise image is never correct
                row["correct"] = [int(c and not n) for c, n in zip(row["correct"], noise)]
                row["accuracy"] = float(np.mean(row["correct"]))
                rows.append({"composition": comp.name, "model": "energy", **row,
                             "noise": int(noise.sum())})
                _save(workdir, f"{_slug(comp.name)}_{k}_{label}", images, prompt)
                if k == 0:
                    grid.append(images[:8])
                logging.info("%-14s %-10s accuracy %.3f (concepts %.3f) nfe %d %.1fs: %s",
                             comp.name, label, row["accuracy"], row["concept_accuracy"],
                             row["nfe"], row["seconds"], prompt)
        image_grids.save_grid(np.concatenate(grid), os.path.join(
            workdir, "figures", f"{_slug(comp.name)}.png"), ncols=len(grid[0]),
            titles=[s if i == 0 else "" for s in labels for i in range(len(grid[0]))])
    return {"rows": rows, "classifier_accuracy": judge["accuracy"], "classifier": judge,
            "train_seconds": train_seconds}


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
                            "noise": int(sum(r.get("noise", 0) for r in at)),
                            "nfe": at[0]["nfe"], "seconds": float(sum(r["seconds"] for r in at))})
    return out


MULTI_CONCEPT = ("2 AND", "3 AND", "AND NOT", "OR")


def claims(result: dict) -> list[dict]:
    """RRR's claim: HMC on the energy model beats reverse diffusion on multi-concept prompts;
    and the same for the adapted rows of docs/smc.md where the table has them. On per-image
    outcomes paired by prompt and image (the exact McNemar test)."""
    pooled: dict[str, list[int]] = {}
    for sampler in dict.fromkeys(r["sampler"] for r in result["rows"]):
        pooled[sampler] = [c for r in result["rows"] if r["composition"] in MULTI_CONCEPT
                           and r["sampler"] == sampler for c in r.get("correct", [])]
    out = []
    for sampler, name in (("hmc", "HMC"), ("mala+adapt", "adapted MALA"),
                          ("mala+adapt+smc", "adapted MALA SMC")):
        a, b = pooled.get(sampler), pooled.get("reverse")
        if a and b and len(a) == len(b):
            out.append(paired.compare(f"Multi-concept prompts ({', '.join(MULTI_CONCEPT)}): "
                                      f"{name} beats reverse diffusion", sampler, a,
                                      "reverse", b, binary=True))
    return out


def _notes(result: dict) -> list[str]:
    """The numbers that separate classifier, model and sampler error."""
    table = {(s["composition"], s["sampler"]): s for s in summary(result)}
    lines = [f"Judge (concept classifier) on held-out renders: {result['classifier_accuracy']:.3f}"
             f" on hard balanced queries, {result['classifier']['all_concepts_accuracy']:.3f} "
             "over every concept of every image (classifier error)."]
    single = table.get(("1 concept", "reverse"))
    if single:
        lines.append(f"Model before composition: one concept by reverse diffusion "
                     f"{single['accuracy']:.2f} (model error {1 - single['accuracy']:.2f}).")
    sharing = compile_sharing(result["rows"])
    if sharing:
        lines.append(
            f"Sampling: {sharing['sampling_seconds']:.0f} s for {sharing['cells']} cells, "
            f"{sharing['compiles']} sampler compiles ({sharing['compile_seconds']:.0f} s of XLA "
            "compiling; prompts of one shape share one). One compile per cell, as before "
            "conditions became array leaves, would add about "
            f"{sharing['unshared_extra_seconds']:.0f} s (the missing compiles at each "
            "sampler's mean compile time in this run; tracing not counted).")
    return lines


def compile_sharing(rows: list[dict]) -> dict | None:
    """Sampling and compile seconds of the rows, and what one compile per cell would add:
    each cell that reused a compile, charged its sampler's mean compile time in this run."""
    if not rows or any("compiles" not in r for r in rows):
        return None
    per_compile = {}
    for label in dict.fromkeys(r["sampler"] for r in rows):
        timed = [r for r in rows if r["sampler"] == label and r["compiles"]]
        per_compile[label] = (sum(r["compile_seconds"] for r in timed)
                              / max(sum(r["compiles"] for r in timed), 1))
    return {"cells": len(rows), "compiles": sum(r["compiles"] for r in rows),
            "sampling_seconds": float(sum(r["seconds"] for r in rows)),
            "compile_seconds": float(sum(r["compile_seconds"] for r in rows)),
            "unshared_extra_seconds": float(sum(per_compile[r["sampler"]] for r in rows
                                                if not r["compiles"]))}


def markdown(result: dict) -> str:
    lines = ["| composition | sampler | accuracy | concepts met | images | noise | NFE | seconds |",
             "|---" * 8 + "|"]
    for s in summary(result):
        lines.append(f"| {s['composition']} | {s['sampler']} | {s['accuracy']:.2f} | "
                     f"{s['concept_accuracy']:.2f} | {s['num_images']} | {s['noise']} | "
                     f"{s['nfe']} | {s['seconds']:.0f} |")
    lines += [""] + _notes(result)
    lines.append("\nPrompts: " + "; ".join(
        f"{c['name']}: " + " | ".join(c["prompts"]) for c in result["config"]["compositions"])
        + ".")
    return "\n".join(lines) + "\n"
