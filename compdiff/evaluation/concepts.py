"""Is a generated image correct for its prompt? Scoring by a concept-presence classifier.

A prompt of the text-to-image setup asks for concepts: "a red cube AND a blue sphere AND
NOT a green cylinder" requires two and forbids one; "(a red cube OR a blue sphere) AND a
yellow cylinder" needs at least one of a group. Given ``presence(images, concepts) ->
p(concept present | image)`` (the evaluation classifier of
``configs/models/text2image_classifier.py``, see :func:`classifier_presence`), an image is
correct when (:func:`prompt_correct`):

- every ``required`` concept is present: ``p > threshold`` (0.5);
- every ``forbidden`` concept is absent: ``p <= threshold``;
- every group of ``any_of`` has at least one concept present (``p > threshold``).

An empty list asks nothing (no requirements: every image is correct). Each rule is the
per-concept decision of the classifier, so a prompt's accuracy is bounded by the
classifier's accuracy per concept (about its held-out accuracy per asked concept).

A concept is a vector ``[q]`` (the classifier's query, e.g.
:func:`compdiff.data.examples.concept_vector` ``(shape, colour)``, ``q = 7``) or a
``(shape, colour)`` pair of indices, turned into that vector. This module knows no prompt
syntax: :func:`requirements` reads them off a parsed prompt (:mod:`compdiff.prompts`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from compdiff import prompts
from compdiff.data import captioned_scenes, examples
from compdiff.data import images as image_data
from compdiff.evaluation.batched import batched_apply
from compdiff.models.loading import load_params

# images [B, D], concept vectors [B, q] -> p(concept present | image) [B]
PresenceFn = Callable[[np.ndarray, np.ndarray], Any]
Concept = np.ndarray | Sequence[float] | tuple[int, int]


def as_vector(concept: Concept) -> np.ndarray:
    """A concept as a float32 vector: ``(shape, colour)`` indices or a vector as it is."""
    array = np.asarray(concept)
    if array.shape == (2,) and np.issubdtype(array.dtype, np.integer):
        return examples.concept_vector(int(array[0]), int(array[1]))
    if array.ndim != 1:
        raise ValueError(f"a concept is a vector [q] or a (shape, colour) pair of ints, got "
                         f"shape {array.shape}")
    return array.astype(np.float32)


def presence_probs(presence: PresenceFn, images: np.ndarray,
                   concepts: Sequence[Concept]) -> np.ndarray:
    """``[B, K]``: ``p(concept k present | image b)``, one classifier call per concept."""
    images = np.asarray(images)
    out = np.zeros((len(images), len(concepts)), np.float32)
    for k, concept in enumerate(concepts):
        vector = as_vector(concept)
        probs = np.asarray(presence(images, np.broadcast_to(vector, (len(images),
                                                                     len(vector)))))
        if probs.shape != (len(images),):
            raise ValueError(f"presence must return one probability per image, shape "
                             f"({len(images)},); got {probs.shape}")
        out[:, k] = probs
    return out


def correct_from_probs(required: np.ndarray, forbidden: np.ndarray,
                       any_of: Sequence[np.ndarray] = (),
                       threshold: float = 0.5) -> np.ndarray:
    """The rule of :func:`prompt_correct` on probabilities already computed.

    ``required [B, R]``, ``forbidden [B, F]`` (``R``, ``F`` may be 0) and one ``[B, k]``
    per OR group (``k >= 1``) -> bool ``[B]``.
    """
    required, forbidden = np.asarray(required), np.asarray(forbidden)
    if required.ndim != 2 or forbidden.ndim != 2 or len(required) != len(forbidden):
        raise ValueError(f"required and forbidden must be [B, R] and [B, F] with one B, got "
                         f"{required.shape} and {forbidden.shape}")
    ok = np.all(required > threshold, axis=1) & np.all(forbidden <= threshold, axis=1)
    for group in any_of:
        group = np.asarray(group)
        if group.ndim != 2 or group.shape[0] != len(ok) or group.shape[1] == 0:
            raise ValueError(f"an OR group must be [B, k] with B = {len(ok)} and k >= 1, got "
                             f"{group.shape}")
        ok &= np.any(group > threshold, axis=1)
    return ok


def prompt_correct(presence: PresenceFn, images: np.ndarray,
                   required: Sequence[Concept] = (), forbidden: Sequence[Concept] = (),
                   any_of: Sequence[Sequence[Concept]] = (),
                   threshold: float = 0.5) -> np.ndarray:
    """Per image (bool ``[B]``): every ``required`` concept present (``p > threshold``),
    every ``forbidden`` one absent (``p <= threshold``) and, for each group of ``any_of``,
    at least one of its concepts present.

    ``presence(images [B, D], concepts [B, q]) -> p [B]``; ``images`` as the classifier
    reads them (flat, in ``[-1, 1]``). Each distinct concept is asked once.
    """
    if any(len(group) == 0 for group in any_of):
        raise ValueError("an OR group (any_of) needs at least one concept")
    images = np.asarray(images)
    every = [as_vector(c) for c in required] + [as_vector(c) for c in forbidden] + [
        as_vector(c) for group in any_of for c in group]
    unique: dict[bytes, int] = {}
    for vector in every:
        unique.setdefault(vector.tobytes(), len(unique))
    table = presence_probs(presence, images, [np.frombuffer(key, np.float32)
                                              for key in unique])

    def cols(concepts: Sequence[Concept]) -> np.ndarray:
        index = [unique[as_vector(c).tobytes()] for c in concepts]
        return table[:, index] if index else np.zeros((len(images), 0), np.float32)

    return correct_from_probs(cols(required), cols(forbidden),
                              [cols(group) for group in any_of], threshold)


def classifier_presence(network: Any, params: Any, batch: int = 256) -> PresenceFn:
    """The :data:`PresenceFn` of a concept classifier: ``sigmoid(logit)`` of a
    ``query="vector"`` one (one output, the concept read by FiLM), or of the concept's own
    output of a multi-label one (:data:`examples.NUM_CONCEPTS` outputs,
    :func:`examples.concept_index`)."""
    multilabel = getattr(network, "query", "vector") == "none"
    if multilabel:
        def probs(p, x, c):  # c: [B, 1] the asked concept's output
            logits = network.apply({"params": p}, x, None)
            return jax.nn.sigmoid(jax.numpy.take_along_axis(logits, c, axis=1)[:, 0])
    else:
        def probs(p, x, c):
            return jax.nn.sigmoid(network.apply({"params": p}, x, None, c)[:, 0])
    apply = jax.jit(probs)

    def presence(images: np.ndarray, concepts: np.ndarray) -> np.ndarray:
        concepts = np.asarray(concepts)
        if multilabel:
            concepts = np.array([[examples.concept_index(*examples.concept_of(v))]
                                 for v in concepts], np.int32)
        return batched_apply(functools.partial(apply, params), images, concepts,
                             batch_size=batch)

    return presence


def load_presence(workdir: str) -> PresenceFn:
    """The :data:`PresenceFn` of the classifier trained in ``workdir`` (EMA parameters)."""
    config, network, params = load_params(workdir)
    query, outputs = config.model.get("query", "none"), config.model.get("num_outputs")
    if config.get("task") != "classifier" or not (
            (query == "vector" and outputs == 1)
            or (query == "none" and outputs == examples.NUM_CONCEPTS)):
        raise ValueError(f"{workdir} holds no concept classifier (task classifier with "
                         f"model.query vector and 1 output, or no query and "
                         f"{examples.NUM_CONCEPTS} outputs); it has task "
                         f"{config.get('task')!r}, query {query!r}, {outputs} outputs")
    return classifier_presence(network, params)


def evaluate(presence: PresenceFn, records: Sequence[Any], seed: int = 0) -> dict:
    """Held-out scores of a concept classifier on captioned_scenes ``records``.

    - ``accuracy``: on the queries of :func:`examples.concept_presence` (one per image, seeded
      by ``seed``: half present, half absent and mostly sharing a shape or a colour with an
      object, the hard case); ``held_out_accuracy``: those asking a held-out pair;
    - ``all_concepts_accuracy``: every concept of every image; ``present_recall``,
      ``absent_specificity``, ``image_accuracy`` (all 12 right), and ``held_out_*`` on the
      held-out pairs' columns.
    """
    records = list(records)
    rng = np.random.default_rng(seed)
    drawn = [examples.concept_presence(r, rng) for r in records]
    x = np.stack([image_data.to_unit_range(r["image"]) for r in records])
    x = x.reshape(len(x), -1)
    held = {(captioned_scenes.SHAPES.index(s), captioned_scenes.COLOURS.index(c))
            for s, c in captioned_scenes.HELD_OUT}
    labels = np.array([bool(e["label"]) for e in drawn])
    asked = np.stack([e["cond"] for e in drawn])
    correct = (np.asarray(presence(x, asked)) > 0.5) == labels
    out = {"accuracy": float(correct.mean()), "num": len(records),
           "positive_fraction": float(labels.mean())}
    mask = np.array([examples.concept_of(c) in held for c in asked])
    if mask.any():
        out["held_out_accuracy"] = float(correct[mask].mean())
        out["held_out_num"] = int(mask.sum())
    concepts = [(s, c) for s in range(len(captioned_scenes.SHAPES))
                for c in range(len(captioned_scenes.COLOURS))]
    truth = np.array([[concept in examples.present_concepts(r) for concept in concepts]
                      for r in records])
    pred = presence_probs(presence, x, concepts) > 0.5
    right = pred == truth
    out.update({"all_concepts_accuracy": float(right.mean()), "all_concepts_num": right.size,
                "present_recall": float(pred[truth].mean()),
                "absent_specificity": float((~pred[~truth]).mean()),
                "image_accuracy": float(right.all(axis=1).mean())})
    cols = [k for k, concept in enumerate(concepts) if concept in held]
    h_truth, h_pred = truth[:, cols], pred[:, cols]
    out["held_out_all_concepts_accuracy"] = float((h_pred == h_truth).mean())
    if h_truth.any():
        out["held_out_present_recall"] = float(h_pred[h_truth].mean())
        out["held_out_present_num"] = int(h_truth.sum())
    return out


def phrase_concept(text: str) -> tuple[int, int]:
    """``(shape, colour)`` of a caption of captioned_scenes (``"a small red cube"``)."""
    parts = captioned_scenes.caption_parts(captioned_scenes.caption_index(text))
    return parts.shape, parts.colour


def requirements(tree: Any, concept_of: Callable[[str], Concept] = phrase_concept
                 ) -> tuple[list[Concept], list[Concept], list[list[Concept]]]:
    """``(required, forbidden, any_of)`` of a prompt tree for :func:`prompt_correct`.

    The prompt is an AND (or one term) of phrases (required), ``NOT`` phrases (forbidden)
    and ``OR`` groups of phrases (one of them required); ``concept_of`` maps a phrase to its
    concept. Weights do not change what is asked. Other shapes (nested groups, NOT of a
    group) have no single rule and raise ``ValueError``.
    """
    terms = tree.children if isinstance(tree, prompts.And) else (tree,)
    required, forbidden, any_of = [], [], []
    for term in terms:
        if isinstance(term, prompts.Phrase):
            required.append(concept_of(term.text))
        elif isinstance(term, prompts.Not) and isinstance(term.child, prompts.Phrase):
            forbidden.append(concept_of(term.child.text))
        elif isinstance(term, prompts.Or) and all(isinstance(c, prompts.Phrase)
                                                   for c in term.children):
            any_of.append([concept_of(c.text) for c in term.children])
        else:
            raise ValueError(f"cannot score '{term}' in '{tree}': a scored prompt is an AND of "
                             "phrases, NOT phrases and OR groups of phrases")
    return required, forbidden, any_of


def score_prompt(presence: PresenceFn, images: np.ndarray, tree: Any) -> dict[str, float]:
    """``accuracy`` (the fraction of ``images`` meeting every requirement of the parsed
    prompt ``tree``) and ``concept_accuracy`` (the mean fraction of requirements met)."""
    required, forbidden, any_of = requirements(tree)
    flat = np.asarray(images).reshape(len(images), -1)
    correct = prompt_correct(presence, flat, required, forbidden, any_of)
    parts = ([prompt_correct(presence, flat, [c]) for c in required]
             + [prompt_correct(presence, flat, forbidden=[c]) for c in forbidden]
             + [prompt_correct(presence, flat, any_of=[g]) for g in any_of])
    return {"accuracy": float(correct.mean()),
            "concept_accuracy": float(np.mean(parts)) if parts else float(correct.mean())}
