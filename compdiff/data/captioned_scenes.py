"""``captioned_scenes``: rendered scenes of 1 to 3 objects, each with a caption (tfds, no download).

What it is. Every example is a scene of :mod:`compdiff.data.render` with 1 to 3 objects
(the count uniform on 1..3): one of :data:`SHAPES` (cube, sphere, cylinder) in one of
:data:`COLOURS` (those of :mod:`.scene_classes`: red, green, blue, yellow), small or large,
at a random non-overlapping position and rotation, placed by :func:`render.sample_scene`. It
is the data of a text-conditioned model ``p(image | a caption of ONE object in it)`` (RRR
sec. 5.4; Composable Diffusion), whose captions are composed at sampling time: "a red cube"
AND "a blue sphere" AND NOT "a green cylinder".

Captions. A caption describes one object by its attributes, with an optional size, an
optional side and one of :data:`TEMPLATES`: "a red cube", "small red cube", "there is a
large yellow cylinder on the left", "a picture of a blue sphere in the centre". The side is
``left`` / ``centre`` / ``right`` from the object's image-plane ``u`` (thresholds 1/3 and 2/3,
:func:`side_of`). The set of captions is finite: :func:`caption_vocabulary` lists all
:data:`NUM_CAPTIONS` = 576 of them (4 templates x 3 size options x 4 side options x 3 shapes
x 4 colours, held-out pairs included), and a caption's id is its index there, a mixed-radix
number of its parts (:func:`caption_id`, :func:`caption_parts`, :func:`caption_text`,
:func:`caption_index`), so a text embedding table ``[NUM_CAPTIONS, d]`` is computed once.
:func:`random_caption_id` draws one valid phrasing of an object (size and side each said
with probability 1/2, the template uniform); :func:`object_caption_ids` lists all 16.

Fields of a record (objects in placement order, padded to :data:`MAX_OBJECTS` = 3):
``image`` uint8 ``[R, R, 3]``; ``count`` int32 (1..3); ``shape``, ``colour``, ``size`` and
``side`` int32 ``[3]`` (into :data:`SHAPES`, :data:`COLOURS`, :data:`SIZES`, :data:`SIDES`;
-1 in padded slots); ``positions`` float32 ``[3, 2]``, the image-plane centres ``(u, v)`` as
in :mod:`.clevr_positions` (``u`` to the right, ``v`` downward, zeros in padded slots);
``caption_id`` int32 ``[3]``, one phrasing per object drawn with the example (-1 in padded
slots). The example function ``image_caption`` of :mod:`.examples` picks one object and
(by default) a fresh random phrasing of it per draw.

Held-out pairs. :data:`HELD_OUT` is that of :mod:`.scene_classes`: (cube, red), (sphere,
green), (cylinder, blue). In the configs without ``_all`` no object of the ``train`` split
has a held-out ``(shape, colour)`` pair (each object's colour is uniform over the colours
its shape keeps, so the 9 kept pairs are equally likely), while ``test`` draws all 12: a
model trained on ``train`` and prompted with "a red cube" must compose "red" and "cube".
The ``_all`` configs keep every pair in ``train``; their ``test`` splits equal the others'.

Determinism. Example ``i`` of split ``s`` (train 0, test 1) is drawn and rendered from
``np.random.default_rng([seed, s, i])`` (:func:`make_example`): a config always yields the
same arrays, whatever the generation order. Shuffling is disabled, so ``data_source(...)[i]``
is example ``i``.

Configs (train / test) and build times on one core of a busy 2-core CPU (nice 19): ``tiny``
16 px 240 / 48 and ``tiny_all`` (tests; 0.4 s), ``32px`` 20_000 / 1_000 and ``32px_all`` (37
s measured, 11 MB), ``64px`` 200_000 / 5_000 and ``64px_all`` (RRR's scale, for accelerator
runs; about 20 min, extrapolated from 4.7 ms per example on 500 examples plus the writing
overhead measured at 32 px). At 32 px a small object is 2 to 4 pixels across, so its shape
is barely visible; 64 px shows it. ``32px_large`` and ``32px_large_all`` draw only large
objects (5 to 7 pixels across at 32 px, shapes legible), the CPU-scale data of
``configs/models/text2image.py``: a model that fits a 2-core budget is 32 px at most. A progress
bar shows::

    python -m compdiff.data.captioned_scenes --config=32px --data_dir=/path/to/tfds
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from compdiff.data import builders, render, scene_classes

SHAPES: tuple[str, ...] = render.SHAPES
COLOURS: tuple[str, ...] = scene_classes.COLOURS
SIZES: tuple[str, ...] = tuple(render.SIZES)
SIDES: tuple[str, ...] = ("left", "centre", "right")
HELD_OUT: tuple[tuple[str, str], ...] = scene_classes.HELD_OUT
MAX_OBJECTS = 3
# "{}" is the object's description: "[size ]colour shape[ side]"
TEMPLATES: tuple[str, ...] = ("a {}", "{}", "there is a {}", "a picture of a {}")
SIDE_PHRASES: dict[str, str] = {"left": "on the left", "centre": "in the centre",
                                "right": "on the right"}
# size and side: -1 (not said) or an index, so 1 + len options each
NUM_CAPTIONS = (len(TEMPLATES) * (len(SIZES) + 1) * (len(SIDES) + 1) * len(SHAPES)
                * len(COLOURS))
_SPLITS = {"train": 0, "test": 1}
_RENDER_COLOUR = np.array([list(render.COLORS).index(c) for c in COLOURS], np.int32)


class Caption(NamedTuple):
    """The parts of a caption: indices into SHAPES, COLOURS, SIZES (-1: not said), SIDES
    (-1: not said) and TEMPLATES."""

    shape: int
    colour: int
    size: int
    side: int
    template: int


# mixed radix, colour fastest: id 0 is "a red cube"
_RADICES = (len(TEMPLATES), len(SIZES) + 1, len(SIDES) + 1, len(SHAPES), len(COLOURS))


def side_of(u: float | np.ndarray) -> int | np.ndarray:
    """Index into :data:`SIDES` of image-plane ``u``: left below 1/3, right from 2/3 up."""
    side = (np.asarray(u) >= 1 / 3).astype(np.int32) + (np.asarray(u) >= 2 / 3)
    return int(side) if side.ndim == 0 else side.astype(np.int32)


def caption_id(shape: int, colour: int, size: int = -1, side: int = -1,
               template: int = 0) -> int:
    """The vocabulary id of a caption; ``size`` / ``side`` -1 leave them unsaid."""
    digits = (int(template), int(size) + 1, int(side) + 1, int(shape), int(colour))
    if not all(0 <= digit < radix for digit, radix in zip(digits, _RADICES, strict=True)):
        raise ValueError(f"caption part out of range: template={template}, size={size}, "
                         f"side={side}, shape={shape}, colour={colour} (template < "
                         f"{len(TEMPLATES)}, -1 <= size < {len(SIZES)}, -1 <= side < "
                         f"{len(SIDES)}, shape < {len(SHAPES)}, colour < {len(COLOURS)})")
    cid = 0
    for digit, radix in zip(digits, _RADICES, strict=True):
        cid = cid * radix + digit
    return cid


def caption_parts(cid: int) -> Caption:
    """The parts of caption ``cid`` (inverse of :func:`caption_id`)."""
    cid = int(cid)
    if not 0 <= cid < NUM_CAPTIONS:
        raise ValueError(f"caption id {cid} is outside 0..{NUM_CAPTIONS - 1}")
    digits = []
    for radix in reversed(_RADICES):
        cid, digit = divmod(cid, radix)
        digits.append(digit)
    colour, shape, side, size, template = digits
    return Caption(shape=shape, colour=colour, size=size - 1, side=side - 1, template=template)


def caption_text(cid: int) -> str:
    """The text of caption ``cid``, e.g. ``"there is a small blue sphere on the right"``."""
    p = caption_parts(cid)
    words = ([SIZES[p.size]] if p.size >= 0 else []) + [COLOURS[p.colour], SHAPES[p.shape]]
    if p.side >= 0:
        words.append(SIDE_PHRASES[SIDES[p.side]])
    return TEMPLATES[p.template].format(" ".join(words))


@functools.cache
def caption_vocabulary() -> tuple[str, ...]:
    """Every caption, in id order (``caption_vocabulary()[i] == caption_text(i)``)."""
    return tuple(caption_text(i) for i in range(NUM_CAPTIONS))


@functools.cache
def _caption_ids() -> dict[str, int]:
    return {text: i for i, text in enumerate(caption_vocabulary())}


def caption_index(text: str) -> int:
    """The id of a caption's text (for prompts such as ``"a red cube"``)."""
    try:
        return _caption_ids()[text.strip()]
    except KeyError:
        raise ValueError(f"{text!r} is not a caption of captioned_scenes; captions look like "
                         f"{caption_text(0)!r} or {caption_text(NUM_CAPTIONS - 1)!r} "
                         "(see caption_vocabulary())") from None


def object_caption_ids(shape: int, colour: int, size: int, side: int) -> list[int]:
    """The ids of every phrasing of an object (each template, with/without size and side)."""
    return sorted(caption_id(shape, colour, sz, sd, t) for t in range(len(TEMPLATES))
                  for sz in (-1, size) for sd in (-1, side))


def random_caption_id(shape: int, colour: int, size: int, side: int,
                      rng: np.random.Generator) -> int:
    """One phrasing of an object: size and side each said with probability 1/2, the template
    uniform."""
    say_size, say_side = rng.random(2) < 0.5
    template = int(rng.integers(len(TEMPLATES)))
    return caption_id(shape, colour, size if say_size else -1, side if say_side else -1,
                      template)


@dataclasses.dataclass(eq=False)
class CaptionedScenesConfig(tfds.core.BuilderConfig):
    """A ``captioned_scenes`` configuration; ``held_out``: pairs absent from ``train``;
    ``sizes``: the object sizes drawn."""

    resolution: int = 32
    num_train: int = 20_000
    num_test: int = 1_000
    held_out: tuple[tuple[str, str], ...] = HELD_OUT
    sizes: tuple[str, ...] = SIZES
    seed: int = 0

    def colours(self, split: str) -> list[list[int]]:
        """Per shape, the colour indices a split draws (``test``: all; ``train``: not held out)."""
        held = set(self.held_out) if split == "train" else set()
        allowed = [[c for c, colour in enumerate(COLOURS) if (shape, colour) not in held]
                   for shape in SHAPES]
        if not all(allowed):
            raise ValueError(f"held_out {self.held_out} leaves a shape without colours")
        return allowed


def _cfg(name, resolution, num_train, num_test, held_out=HELD_OUT, sizes=SIZES):
    kept = "all 12 pairs" if not held_out else f"{len(held_out)} pairs held out of train"
    return CaptionedScenesConfig(name=name, resolution=resolution, num_train=num_train,
                                 num_test=num_test, held_out=tuple(held_out),
                                 sizes=tuple(sizes),
                                 description=f"{resolution}px captioned scenes of 1 to "
                                             f"{MAX_OBJECTS} {'/'.join(sizes)} objects, "
                                             f"{kept}")


class CaptionedScenes(tfds.core.GeneratorBasedBuilder):
    """Rendered scenes of 1 to 3 objects, each object with its attributes and a caption."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        _cfg("tiny", 16, 240, 48),
        _cfg("tiny_all", 16, 240, 48, held_out=()),
        _cfg("32px", 32, 20_000, 1_000),
        _cfg("32px_all", 32, 20_000, 1_000, held_out=()),
        _cfg("32px_large", 32, 20_000, 1_000, sizes=("large",)),
        _cfg("32px_large_all", 32, 20_000, 1_000, held_out=(), sizes=("large",)),
        _cfg("64px", 64, 200_000, 5_000),
        _cfg("64px_all", 64, 200_000, 5_000, held_out=()),
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # as in clevr_positions: tfds's lookup needs importlib_resources outside its own package
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        per_object = tfds.features.Tensor(shape=(MAX_OBJECTS,), dtype=np.int32)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[1],
            disable_shuffling=True,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(r, r, 3), dtype=np.uint8),
                "count": tfds.features.Tensor(shape=(), dtype=np.int32),
                "shape": per_object, "colour": per_object, "size": per_object,
                "side": per_object, "caption_id": per_object,
                "positions": tfds.features.Tensor(shape=(MAX_OBJECTS, 2), dtype=np.float32),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        c = self.builder_config
        return {"train": self._generate_examples("train", c.num_train),
                "test": self._generate_examples("test", c.num_test)}

    def _generate_examples(self, split: str, num: int):
        for i in range(num):
            yield i, make_example(self.builder_config, split, i)


def _pad(values: np.ndarray, fill: float, dtype) -> np.ndarray:
    out = np.full((MAX_OBJECTS,) + values.shape[1:], fill, dtype)
    out[:len(values)] = values
    return out


def make_example(config: CaptionedScenesConfig, split: str, index: int) -> dict:
    """Example ``index`` of ``split``, a pure function of its inputs."""
    allowed = config.colours(split)
    rng = np.random.default_rng([config.seed, _SPLITS[split], index])
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    scene = render.sample_scene(rng, count, shapes=SHAPES, sizes=config.sizes)
    # placement does not depend on the colour: redraw it from the split's colours per shape
    colour = np.array([allowed[s][rng.integers(len(allowed[s]))] for s in scene.shape],
                      np.int32)
    scene = dataclasses.replace(scene, color=_RENDER_COLOUR[colour])
    side = side_of(scene.centers[:, 0])
    captions = np.array([random_caption_id(scene.shape[k], colour[k], scene.size[k], side[k],
                                           rng) for k in range(count)], np.int32)
    return {
        "image": render.render(scene, config.resolution),
        "count": np.int32(count),
        "shape": _pad(scene.shape, -1, np.int32),
        "colour": _pad(colour, -1, np.int32),
        "size": _pad(scene.size, -1, np.int32),
        "side": _pad(side, -1, np.int32),
        "caption_id": _pad(captions, -1, np.int32),
        "positions": _pad(scene.centers, 0.0, np.float32),
    }


def config_names() -> list[str]:
    return builders.config_names(CaptionedScenes)


def prepare(config_name: str, data_dir: str) -> CaptionedScenes:
    """Builds ``captioned_scenes/<config_name>`` under ``data_dir`` (or reuses it)."""
    return builders.prepare(CaptionedScenes, config_name, data_dir)


def data_source(config_name: str, split: str, data_dir: str):
    """Random-access source (``len(src)``, ``src[i]`` -> dict of numpy arrays) of a split."""
    return builders.data_source(CaptionedScenes, config_name, split, data_dir, _SPLITS)


def main(argv: list[str] | None = None) -> None:
    builders.build_main(CaptionedScenes, "32px", argv)


if __name__ == "__main__":
    main()
