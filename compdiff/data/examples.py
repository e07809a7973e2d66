"""Example functions: one dataset record -> one training example (see :mod:`.images`).

Each takes a record (a dict of numpy arrays from a tfds source) and a seeded
``np.random.Generator`` and returns float32 arrays:

- ``image_position`` (diffusion, RRR 5.2 / Composable Diffusion): the image and the
  image-plane centre of ONE of its objects, drawn uniformly, as the condition:
  ``{"x": [H*W*C], "cond": [2]}``. A model of ``p(image | one object at c)``
  composes with itself to place several objects.
- ``position_presence`` (the evaluation classifier, RRR 5.2): the image, a query
  position and whether an object is centred there: half the queries are an
  object's centre (label 1), half are positions at least ``NEGATIVE_RADIUS`` from
  every centre (label 0), half of those close to an object (hard negatives).
  ``{"x": [H*W*C], "cond": [2], "label": []}``.
- ``image_class`` (class-conditional diffusion, classifier-free guidance): the image and
  its class as a one-hot condition, ``{"x": [H*W*C], "cond": [num_classes]}``, so the
  Conditions / condition-dropout machinery of the position models applies unchanged.
- ``class_label`` (classifiers, clean or noise-conditional): ``{"x": [H*W*C], "label":
  int32 []}`` for the cross-entropy loss.

Both read the record field ``key`` (default ``label``; ``shape`` or ``colour`` for the
attributes of ``scene_classes``). Parameters are given in the name, ``data.example =
"image_class:num_classes=10"`` or ``"class_label:key=shape"`` (:func:`get`); the aliases
``shape_label`` / ``colour_label`` and ``image_shape_class`` / ``image_colour_class`` name
the attribute variants of ``scene_classes``; ``shape_label`` permutes the colour channels at
random (``permute_channels=True``) so that a shape classifier cannot read the shape off the
colour, which the held-out pairs make informative in ``train``.

- ``image_caption`` (text-conditioned diffusion on :mod:`.captioned_scenes`, RRR 5.4 /
  Composable Diffusion): the image and a caption of ONE of its objects, drawn uniformly, as
  an id into :func:`captioned_scenes.caption_vocabulary` (turned into a text embedding by
  the training pipeline): ``{"x": [H*W*C], "caption_id": int32 []}``. ``phrasing="random"``
  (the default) draws a fresh phrasing of the object each time (size and side said or
  not, any template: augmentation); ``"image_caption:phrasing=stored"`` takes the one
  stored with the record.
- ``image_text`` (text-conditioned diffusion): ``image_caption`` with the caption's pooled
  text embedding as the condition, ``{"x": [H*W*C], "cond": [d]}``, looked up in
  :func:`caption_embeddings` (``"image_text:encoder=minilm"``).
- ``concept_presence`` (the evaluation classifier of the text-to-image setup): the image of
  a :mod:`.captioned_scenes` record, a concept (a ``(shape, colour)`` pair, as the vector
  of :func:`concept_vector`) and whether an object of the image is that concept: half the
  queries are an object's pair (label 1, the object drawn uniformly), half are pairs of no
  object (label 0); of those, a fraction ``hard`` (default 0.8) share the shape or the
  colour of an object ("a red sphere" asked of an image of a red cube: what a composition
  error looks like), the rest share neither where the image leaves such a pair.
  ``{"x": [H*W*C], "cond": [7], "label": int32 []}``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import numpy as np

from compdiff.data import captioned_scenes
from compdiff.data.pixels import to_unit_range

Record = dict[str, np.ndarray]  # one record of a tfds source
# One record and the example's own seeded generator -> one training example.
ExampleFn = Callable[[Record, np.random.Generator], dict[str, np.ndarray]]

# Image-plane distance (in [0, 1] units) beyond which no object is centred at a query.
NEGATIVE_RADIUS = 0.1


def image_position(record: Record, rng: np.random.Generator) -> dict[str, np.ndarray]:
    positions = np.asarray(record["positions"], np.float32).reshape(-1, 2)
    return {"x": to_unit_range(record["image"]),
            "cond": positions[rng.integers(len(positions))]}


def negative_position(centers: np.ndarray, rng: np.random.Generator,
                      radius: float = NEGATIVE_RADIUS) -> np.ndarray:
    """A position at least ``radius`` from every centre: near one (hard) or anywhere."""
    for _ in range(1000):
        if rng.random() < 0.5:
            angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(radius, 2 * radius)
            query = centers[rng.integers(len(centers))] + dist * np.array(
                [np.cos(angle), np.sin(angle)])
        else:
            query = rng.uniform(0.0, 1.0, 2)
        inside = np.all((query >= 0.0) & (query <= 1.0))
        if inside and np.min(np.linalg.norm(centers - query, axis=-1)) >= radius:
            return query.astype(np.float32)
    raise ValueError(f"no position {radius} away from every object centre in {centers.tolist()}")


def position_presence(record: Record, rng: np.random.Generator) -> dict[str, np.ndarray]:
    centers = np.asarray(record["positions"], np.float32).reshape(-1, 2)
    label = rng.random() < 0.5
    query = (centers[rng.integers(len(centers))] if label
             else negative_position(centers, rng))
    return {"x": to_unit_range(record["image"]), "cond": query.astype(np.float32),
            "label": np.float32(label)}


def image_class(record: Record, rng: np.random.Generator, num_classes: int = 0,
                key: str = "label") -> dict[str, np.ndarray]:
    del rng  # deterministic
    if num_classes < 1:
        raise ValueError("image_class needs num_classes >= 1, e.g. data.example = "
                         "'image_class:num_classes=10'")
    label = int(record[key])
    if not 0 <= label < num_classes:
        raise ValueError(f"record {key}={label} is outside 0..{num_classes - 1}")
    return {"x": to_unit_range(record["image"]),
            "cond": np.eye(num_classes, dtype=np.float32)[label]}


def class_label(record: Record, rng: np.random.Generator, key: str = "label",
                permute_channels: bool = False) -> dict[str, np.ndarray]:
    image = np.asarray(record["image"])
    if permute_channels:  # a random colour channel order: colour carries no label information
        image = image[..., rng.permutation(image.shape[-1])]
    return {"x": to_unit_range(image), "label": np.int32(record[key])}


def image_caption(record: Record, rng: np.random.Generator,
                  phrasing: str = "random") -> dict[str, np.ndarray]:
    count = int(record["count"])
    if not 1 <= count <= len(record["caption_id"]):
        raise ValueError(f"record count={count} is outside 1..{len(record['caption_id'])}")
    k = int(rng.integers(count))
    if phrasing == "stored":
        cid = int(record["caption_id"][k])
    elif phrasing == "random":
        cid = captioned_scenes.random_caption_id(
            record["shape"][k], record["colour"][k], record["size"][k], record["side"][k], rng)
    else:
        raise ValueError(f"image_caption phrasing must be 'random' or 'stored', got "
                         f"{phrasing!r}")
    return {"x": to_unit_range(record["image"]), "caption_id": np.int32(cid)}


@functools.cache
def caption_embeddings(encoder: str) -> np.ndarray:
    """``[len(caption_vocabulary()), d]``: every caption's pooled embedding by the text tower
    ``encoder``, computed once per process (the vocabulary is finite), never per step."""
    from compdiff import text  # the text extra is needed only by text-conditioned runs

    vocabulary = list(captioned_scenes.caption_vocabulary())
    return np.asarray(text.get(encoder).encode(vocabulary).pooled, np.float32)


def image_text(record: Record, rng: np.random.Generator, encoder: str = "minilm",
               phrasing: str = "random") -> dict[str, np.ndarray]:
    example = image_caption(record, rng, phrasing=phrasing)
    return {"x": example["x"], "cond": caption_embeddings(encoder)[example["caption_id"]]}


# A concept of captioned_scenes: a (shape, colour) pair, given to a classifier as a vector.
# It would sit naturally beside caption_id in captioned_scenes.py (the owner of SHAPES and
# COLOURS); it lives here, with its only producer, until that module takes it.
CONCEPT_DIM = len(captioned_scenes.SHAPES) + len(captioned_scenes.COLOURS)


def concept_vector(shape: int, colour: int) -> np.ndarray:
    """``[CONCEPT_DIM]`` float32: a one-hot shape (into ``SHAPES``) then a one-hot colour."""
    num_shapes, num_colours = len(captioned_scenes.SHAPES), len(captioned_scenes.COLOURS)
    if not (0 <= int(shape) < num_shapes and 0 <= int(colour) < num_colours):
        raise ValueError(f"concept (shape={shape}, colour={colour}) out of range: shape < "
                         f"{num_shapes}, colour < {num_colours}")
    vector = np.zeros(CONCEPT_DIM, np.float32)
    vector[int(shape)] = 1.0
    vector[num_shapes + int(colour)] = 1.0
    return vector


NUM_CONCEPTS = len(captioned_scenes.SHAPES) * len(captioned_scenes.COLOURS)


def concept_index(shape: int, colour: int) -> int:
    """The output of a multi-label concept classifier for ``(shape, colour)``: colour fastest."""
    concept_vector(shape, colour)  # the range check
    return int(shape) * len(captioned_scenes.COLOURS) + int(colour)


def concept_of(vector: np.ndarray) -> tuple[int, int]:
    """``(shape, colour)`` of a vector of :func:`concept_vector` (its inverse)."""
    vector = np.asarray(vector)
    num_shapes = len(captioned_scenes.SHAPES)
    if vector.shape != (CONCEPT_DIM,):
        raise ValueError(f"a concept vector has shape ({CONCEPT_DIM},), got {vector.shape}")
    return int(np.argmax(vector[:num_shapes])), int(np.argmax(vector[num_shapes:]))


def present_concepts(record: Record) -> set[tuple[int, int]]:
    """The ``(shape, colour)`` pairs of the objects of a captioned_scenes record."""
    count = int(record["count"])
    if not 1 <= count <= len(record["shape"]):
        raise ValueError(f"record count={count} is outside 1..{len(record['shape'])}")
    return {(int(record["shape"][k]), int(record["colour"][k])) for k in range(count)}


def concept_presence(record: Record, rng: np.random.Generator,
                     hard: float = 0.8) -> dict[str, np.ndarray]:
    if not 0.0 <= hard <= 1.0:
        raise ValueError(f"concept_presence hard must be in [0, 1], got {hard}")
    present = present_concepts(record)
    label = bool(rng.random() < 0.5)
    if label:  # an object, drawn uniformly (a pair twice in the image is twice as likely)
        k = int(rng.integers(int(record["count"])))
        concept = (int(record["shape"][k]), int(record["colour"][k]))
    else:
        absent = [(s, c) for s in range(len(captioned_scenes.SHAPES))
                  for c in range(len(captioned_scenes.COLOURS)) if (s, c) not in present]
        near = [(s, c) for s, c in absent
                if any(s == ps or c == pc for ps, pc in present)]
        far = [pair for pair in absent if pair not in near]
        # near is never empty (an object's shape in another colour is absent); far is
        # empty when the objects cover every shape or every colour
        pool = near if (rng.random() < hard or not far) else far
        concept = pool[int(rng.integers(len(pool)))]
    return {"x": to_unit_range(record["image"]), "cond": concept_vector(*concept),
            "label": np.int32(label)}


def concept_labels(record: Record, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The image and ``labels``: ``[NUM_CONCEPTS]`` float32, 1 where a ``(shape, colour)``
    concept is in it (index :func:`concept_index`): a multi-label classifier's targets."""
    del rng  # the targets are the record's; nothing is drawn
    labels = np.zeros(NUM_CONCEPTS, np.float32)
    for concept in present_concepts(record):
        labels[concept_index(*concept)] = 1.0
    return {"x": to_unit_range(record["image"]), "labels": labels}


EXAMPLES: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    "image_position": image_position,
    "position_presence": position_presence,
    "image_class": image_class,
    "class_label": class_label,
    # scene_classes attributes (compdiff.data.scene_classes: 3 shapes, 4 colours)
    # Shape classifiers see the colour channels in a random order: in the training split of
    # scene_classes no cube is red, so a plain classifier learns "red => not a cube" and
    # calls held-out red cubes cylinders (held-out accuracy 0.27, docs/class_data.md).
    "shape_label": functools.partial(class_label, key="shape", permute_channels=True),
    "colour_label": functools.partial(class_label, key="colour"),
    "image_shape_class": functools.partial(image_class, key="shape", num_classes=3),
    "image_colour_class": functools.partial(image_class, key="colour", num_classes=4),
    # captioned_scenes (compdiff.data.captioned_scenes): one object's caption id
    "image_caption": image_caption,
    "image_text": image_text,
    # captioned_scenes: is a (shape, colour) concept in the image?
    # (configs/models/text2image_classifier.py)
    "concept_presence": concept_presence,
    "concept_labels": concept_labels,  # every concept at once (a multi-label classifier)
}


def _parse_value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def get(name: str) -> Callable[[Record, np.random.Generator], dict[str, np.ndarray]]:
    """The example function ``name``, or ``name:key=value,...`` with those keyword arguments."""
    base, _, args = name.partition(":")
    if base not in EXAMPLES:
        raise ValueError(f"unknown example function {base!r}; known: {sorted(EXAMPLES)}")
    if not args:
        return EXAMPLES[base]
    kwargs = {}
    for item in args.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"bad example argument {item!r} in {name!r}: expected key=value")
        kwargs[key] = _parse_value(value)
    fn = EXAMPLES[base]
    accepted = inspect.signature(fn).parameters
    unknown = sorted(set(kwargs) - set(accepted) - {"record", "rng"})
    if unknown:
        raise ValueError(f"example function {base!r} takes no argument {unknown[0]!r}; "
                         f"it takes {[p for p in accepted if p not in ('record', 'rng')]}")
    return functools.partial(fn, **kwargs)
