"""Held-out accuracy of a trained image classifier (clean, or noise-conditional at a level).

    python scripts/classifier_accuracy.py --workdir=runs/classifier_digits [--split=test]

Reads the run's config (data source, builder config, example function), classifies every
example of ``--split`` with the EMA parameters (argmax of the logits; for a noise-conditional
classifier, on ``x_t`` at ``--level``, default 0 = clean images) and prints one JSON line:
``{"accuracy", "num", "split", ...}``, plus, for ``scene_classes``, the accuracy on the pairs
that the training split held out (``held_out_accuracy``).

A binary classifier (one output) or one that reads a query (``model.query`` ``position`` or
``vector``) is scored on the queries its example function draws for each record (seeded
as the images' order), a prediction being ``sigmoid(logit) > 0.5`` for one output. A
concept classifier of captioned scenes (``configs/models/text2image_classifier.py``, examples
``concept_presence`` or ``concept_labels``) is scored by
:func:`compdiff.evaluation.concepts.evaluate`:
hard balanced queries, every concept of every image, and the held-out pairs on their own.
"""

import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from compdiff import cli
from compdiff.data import examples, images
from compdiff.evaluation import concepts
from compdiff.models.loading import load_params
from compdiff.training import tasks

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of a trained classifier.")
_SPLIT = flags.DEFINE_string("split", "test", "Split to classify.")
_LEVEL = flags.DEFINE_integer("level", 0, "Noise level t of x_t (noise-conditional only).")
flags.mark_flags_as_required(["workdir"])


def accuracy(workdir: str, split: str = "test", level: int = 0, batch: int = 256) -> dict:
    """``{"accuracy", "num", ...}`` of the classifier in ``workdir`` on ``split``."""
    config, network, params = load_params(workdir)
    if config.get("task") != "classifier":
        raise ValueError(f"{workdir} holds a {config.get('task')}, not a classifier")
    noisy = config.model.get("noise_conditional", False)
    if level and not noisy:
        raise ValueError(f"--level={level} needs a noise-conditional classifier")
    data = images.ImageSource.from_config(config.data, split)
    example = examples.get(config.data.example)
    if config.data.example.partition(":")[0] in ("concept_presence", "concept_labels"):
        records = [data.source[i] for i in range(len(data.source))]
        return {**concepts.evaluate(concepts.classifier_presence(network, params), records),
                "split": split, "data": f"{config.data.source}/{config.data.builder_config}",
                "example": config.data.example}
    if config.model.get("query", "none") != "none" or config.model.num_outputs == 1:
        return query_accuracy(config, network, params, data, split, level, batch)
    rng = np.random.default_rng(0)
    records = [data.source[i] for i in range(len(data.source))]
    # the stored images as they are (no training augmentation); the label from the example
    x = np.stack([images.to_unit_range(r["image"]) for r in records])
    labels = np.array([int(example(r, rng)["label"]) for r in records])
    correct = _predict(config, network, params, x, None, level, batch) == labels
    out = {"accuracy": float(correct.mean()), "num": int(len(labels)), "split": split,
           "data": f"{config.data.source}/{config.data.builder_config}",
           "example": config.data.example, "level": level}
    if config.data.source == "scene_classes":
        from compdiff.data import scene_classes

        held = {scene_classes.class_label(s, c) for s, c in scene_classes.HELD_OUT}
        joint = np.array([int(r["label"]) for r in records])
        mask = np.isin(joint, list(held))
        if mask.any():
            out["held_out_accuracy"] = float(correct[mask].mean())
            out["held_out_num"] = int(mask.sum())
    return out


def _predict(config: ml_collections.ConfigDict, network: Any, params: Any, x: np.ndarray,
             cond: np.ndarray | None, level: int, batch: int) -> np.ndarray:
    """Predicted labels of ``x`` (with queries ``cond``): ``logit > 0`` for one output."""
    noisy = config.model.get("noise_conditional", False)
    schedule = tasks.make_schedule(config)
    apply = jax.jit(lambda p, x, t, c: network.apply({"params": p}, x, t, c))
    preds = []
    for i in range(0, len(x), batch):
        xb = jnp.asarray(x[i:i + batch])
        cb = None if cond is None else jnp.asarray(cond[i:i + batch])
        t = None
        if noisy:
            t = jnp.full((len(xb),), level, jnp.int32)
            if level:
                noise = jax.random.normal(jax.random.PRNGKey(i), xb.shape)
                xb = jnp.sqrt(schedule.abar[level]) * xb + schedule.sigma[level] * noise
        logits = apply(params, xb, t, cb)
        preds.append(np.asarray(logits[:, 0] > 0 if logits.shape[-1] == 1
                                else jnp.argmax(logits, -1)).astype(np.int64))
    return np.concatenate(preds)


def query_accuracy(config: ml_collections.ConfigDict, network: Any, params: Any,
                   data: images.ImageSource, split: str, level: int = 0,
                   batch: int = 256) -> dict:
    """Accuracy of a binary or query classifier on the queries of its example function."""
    rng = np.random.default_rng(0)
    records = [data.source[i] for i in range(len(data.source))]
    drawn = [data.example_fn(r, rng) for r in records]
    x = np.stack([images.to_unit_range(r["image"]) for r in records])
    cond = np.stack([e["cond"] for e in drawn]) if "cond" in drawn[0] else None
    labels = np.array([int(e["label"]) for e in drawn])
    correct = _predict(config, network, params, x, cond, level, batch) == labels
    out = {"accuracy": float(correct.mean()), "num": int(len(labels)), "split": split,
           "data": f"{config.data.source}/{config.data.builder_config}",
           "example": config.data.example, "level": level,
           "positive_fraction": float(labels.mean())}
    return out


def main(argv: list[str]) -> None:
    cli.start(argv)
    print(json.dumps(accuracy(_WORKDIR.value, _SPLIT.value, _LEVEL.value)))


if __name__ == "__main__":
    cli.run(main)
