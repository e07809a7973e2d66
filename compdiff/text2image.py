"""Prompted sampling of a text-conditioned diffusion model (RRR 5.4, issue 13).

A model trained by ``configs/models/text2image.py`` reads a caption's pooled text embedding as its
condition, and its saved config names the text tower (``model.text_encoder``). A prompt of
the prompt algebra (:mod:`compdiff.prompts`: ``AND``, ``OR``, ``NOT``, weights, parentheses)
becomes a :class:`~compdiff.compose.Density` over that one network's conditions, every
distinct phrase encoded once by the same tower, and any annealed sampler samples it:

    model, encoder = load(workdir)
    target = prompt_density(model, encoder, "a red cube AND NOT a blue sphere", scale=3.0)
    x, stats = samplers.sample(target, image_sampler("hmc"), model.schedule, key, 16)

:data:`IMAGE_SAMPLERS` holds the samplers with their image settings (those of the CLEVR and
guidance tables at CPU scale: one reverse step into each level, then one kernel step; step
sizes relative to ``beta_t``; the Metropolis-adjusted kernels also with SMC resampling
instead of the reverse step), by their registry labels (``hmc``, ``hmc+smc``), so
``scripts/sample.py --prompt`` needs only a sampler name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from compdiff import distributed, image_grids, prompts, samplers, text
from compdiff.compose import Density
from compdiff.data import images as image_data
from compdiff.evaluation import concepts
from compdiff.models.diffusion import DiffusionModel
from compdiff.models.loading import load_model

# Kernel settings at CPU scale: step a of a * beta_t, one kernel step per level.
_IMAGE_SETTINGS: dict[str, dict[str, Any]] = {
    "reverse": {},
    "ula": dict(step=0.035),
    "mala": dict(step=0.035),
    "uhmc": dict(step=0.1, leapfrog=1, damping=0.5),
    "hmc": dict(step=0.1, leapfrog=1, damping=0.5),
}


def _image_samplers() -> dict[str, samplers.Sampler]:
    out = {}
    for name, settings in _IMAGE_SETTINGS.items():
        if not settings:
            variants = [samplers.registry.from_fields(name)]
        else:
            base = dict(settings, step=(settings["step"], 1.0), mass=(1.0, 1.0),
                        steps_per_level=1, leapfrog=1)
            variants = [samplers.registry.from_fields(name, base, reverse_first=True)]
            if samplers.registry.needs_log_prob(name):  # SMC weights need invariant kernels
                variants.append(samplers.registry.from_fields(name, base, resample_ess=0.5))
                # Steps adapted toward a target acceptance (docs/smc.md): after one reverse
                # step at the same cost, and as SMC with 3 moves from the matched reference.
                goal = 0.6 if name == "mala" else 0.7
                variants.append(samplers.registry.from_fields(name, base, reverse_first=True,
                                                              adapt=goal))
                variants.append(samplers.registry.from_fields(
                    name, base, steps_per_level=3, adapt=goal, resample_ess=0.5,
                    matched_reference=True))
        out.update({samplers.registry.label(s): s for s in variants})
    return out


IMAGE_SAMPLERS: dict[str, samplers.Sampler] = _image_samplers()


def image_sampler(name: str, **overrides: Any) -> samplers.Sampler:
    """The image sampler labelled ``name`` (:data:`IMAGE_SAMPLERS`), with ``overrides`` of its
    :class:`~compdiff.samplers.Sampler` fields."""
    if name not in IMAGE_SAMPLERS:
        raise ValueError(f"unknown image sampler {name!r}; known: {sorted(IMAGE_SAMPLERS)}")
    sampler = IMAGE_SAMPLERS[name]
    return dataclasses.replace(sampler, **overrides) if overrides else sampler


def load(workdir: str) -> tuple[DiffusionModel, text.TextEncoder]:
    """The text-conditioned model trained in ``workdir`` and the tower its captions used."""
    model = load_model(workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        name = json.load(f)["model"].get("text_encoder")
    if not name:
        raise ValueError(f"{workdir} is not a text-conditioned run (its config names no "
                         "model.text_encoder); train one with configs/models/text2image.py")
    return model, text.get(name)


def prompt_density(model: DiffusionModel, encoder: text.TextEncoder,
                   prompt: str | prompts.PromptNode,
                   scale: float = 3.0) -> Density:
    """``prompt`` over ``model``'s conditions, classifier-free weight ``scale``."""
    return prompts.compose_prompt(prompt, model, lambda texts: encoder.encode(texts).pooled,
                                  scale)


def image_shape(workdir: str) -> tuple[int, int, int]:
    """``(H, W, C)`` of the images the run in ``workdir`` was trained on."""
    with open(os.path.join(workdir, "config.json")) as f:
        return tuple(json.load(f)["model"]["image_shape"])


def sample_prompt(workdir: str, prompt: str, sampler: str = "hmc", num: int = 16,
                  scale: float = 3.0, seed: int = 0, out: str | None = None,
                  judge: str | None = None) -> dict:
    """Samples ``prompt`` from the model in ``workdir``; with ``out`` writes ``grid.png``,
    ``samples.npz`` (``x``: uint8 NHWC) and ``samples.json`` there. Returns the summary;
    with ``judge`` (the work directory of a concept classifier,
    ``configs/models/text2image_classifier.py``) it holds the samples' ``accuracy`` and
    ``concept_accuracy`` (:func:`compdiff.evaluation.concepts.score_prompt`)."""
    model, encoder = load(workdir)
    tree = prompts.parse_prompt(prompt)
    presence = concepts.load_presence(judge) if judge else None
    if presence:
        concepts.requirements(tree)  # a prompt the judge cannot score fails before sampling
    target = prompt_density(model, encoder, tree, scale)
    x, stats = samplers.sample(target, image_sampler(sampler), model.schedule,
                               jax.random.key(seed), num)
    x = np.asarray(distributed.gather(x))
    images = image_data.to_uint8(x, image_shape(workdir))
    summary = {"prompt": prompt, "tree": str(tree), "sampler": sampler,
               "scale": scale, "num": num, "nfe": int(stats.nfe),
               "diverged": int(stats.diverged)}
    if presence:
        summary.update(concepts.score_prompt(presence, x, tree))
    if out and distributed.is_main():
        os.makedirs(out, exist_ok=True)
        np.savez_compressed(os.path.join(out, "samples.npz"), x=images)
        image_grids.save_grid(images, os.path.join(out, "grid.png"), ncols=min(8, num))
        with open(os.path.join(out, "samples.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return summary
