"""Is a generated image correct for its prompt? Scoring by a concept-presence classifier.

A prompt of the text-to-image setup asks for concepts: "a red cube AND a blue sphere AND
NOT a green cylinder" requires two and forbids one; "(a red cube OR a blue sphere) AND a
yellow cylinder" needs at least one of a group. Given ``presence(images, concepts) ->
p(concept present | image)`` (the evaluation classifier of
``configs/text2image_classifier.py``, see :func:`classifier_presence`), an image is
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
syntax: the prompt parser (:mod:`compdiff.prompts`) turns a prompt into these lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from compdiff.data import examples

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
    """The :data:`PresenceFn` of a ``query="vector"`` classifier: ``sigmoid(logit)``."""
    import jax

    apply = jax.jit(lambda p, x, c: jax.nn.sigmoid(network.apply({"params": p}, x, None,
                                                                 c)[:, 0]))

    def presence(images: np.ndarray, concepts: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(apply(params, images[i:i + batch],
                                                concepts[i:i + batch]))
                               for i in range(0, len(images), batch)])

    return presence


def load_presence(workdir: str) -> PresenceFn:
    """The :data:`PresenceFn` of the classifier trained in ``workdir`` (EMA parameters)."""
    from compdiff import train

    config, network, params = train.load_params(workdir)
    if config.get("task") != "classifier" or config.model.get("query") != "vector":
        raise ValueError(f"{workdir} holds no concept classifier (task classifier, "
                         f"model.query vector); it has task {config.get('task')!r}, query "
                         f"{config.model.get('query')!r}")
    return classifier_presence(network, params)
