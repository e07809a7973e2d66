"""``scene_classes``: one rendered object per image, classed by shape x colour (tfds, no download).

What it is. Every example is a scene of :mod:`compdiff.data.render` with exactly one object:
one of :data:`SHAPES` (cube, sphere, cylinder) in one of :data:`COLOURS` (4 CLEVR colours
that differ in hue: red, green, blue, yellow), small or large, at a random position and
rotation, with the renderer's shading and shadow. The class of an image is its
``(shape, colour)`` pair: ``label = shape * len(COLOURS) + colour`` (12 classes), with the
attributes ``shape`` (0..2, into :data:`SHAPES`) and ``colour`` (0..3, into :data:`COLOURS`)
recorded too.

Held-out pairs. :data:`HELD_OUT` = (cube, red), (sphere, green), (cylinder, blue): one per
shape and per colour, so every shape and every colour still appears in ``train``, but never
in these combinations. In the configs without ``_all`` the ``train`` split has only the
other 9 pairs, while ``test`` has all 12. A generator and attribute classifiers (one for
shape, one for colour) trained on ``train`` can then be composed, ``p(x) p(shape | x)
p(colour | x)``, to ask for a pair the generator never saw (Du & Kaelbling; RRR): the test
split tells whether the composition generalizes. The ``_all`` configs keep every pair in
``train`` (their ``HELD_OUT`` is empty): data for *evaluation* classifiers, which must know
all 12 classes to score such samples. The test splits of ``32px`` and ``32px_all`` are the
same images.

Balance and determinism. Example ``i`` of a split has the class ``pairs[i % len(pairs)]``
(``pairs``: the split's allowed pairs in label order), so classes are balanced, and is
rendered from ``np.random.default_rng([seed, split_id, i])``: a config always yields the
same arrays, whatever the generation order (``make_example``). Shuffling is disabled, so
``data_source(...)[i]`` is example ``i``.

Configs (train / test): ``tiny`` 16 px 108 / 48 and ``tiny_all`` (tests), ``32px``
12_000 / 1_200 and ``32px_all``. Building ``32px`` takes about a minute on one core (a
progress bar shows)::

    python -m compdiff.data.scene_classes --config=32px --data_dir=/path/to/tfds
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from compdiff.data import builders, render

SHAPES: tuple[str, ...] = render.SHAPES
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
HELD_OUT: tuple[tuple[str, str], ...] = (("cube", "red"), ("sphere", "green"),
                                         ("cylinder", "blue"))
NUM_CLASSES = len(SHAPES) * len(COLOURS)
_SPLITS = {"train": 0, "test": 1}
_LARGE = list(render.SIZES).index("large")


def class_label(shape: str, colour: str) -> int:
    """The joint label of a ``(shape, colour)`` pair: ``shape * len(COLOURS) + colour``."""
    if shape not in SHAPES or colour not in COLOURS:
        raise ValueError(f"unknown class ({shape!r}, {colour!r}); shapes {SHAPES}, "
                         f"colours {COLOURS}")
    return SHAPES.index(shape) * len(COLOURS) + COLOURS.index(colour)


def class_name(label: int) -> tuple[str, str]:
    """``(shape, colour)`` of a joint label."""
    return SHAPES[label // len(COLOURS)], COLOURS[label % len(COLOURS)]


@dataclasses.dataclass(eq=False)
class SceneClassesConfig(tfds.core.BuilderConfig):
    """A ``scene_classes`` configuration; ``held_out``: pairs absent from ``train``."""

    resolution: int = 32
    num_train: int = 12_000
    num_test: int = 1_200
    held_out: tuple[tuple[str, str], ...] = HELD_OUT
    seed: int = 0

    def pairs(self, split: str) -> list[int]:
        """The joint labels a split draws from (``test``: all; ``train``: all but held out)."""
        held = {class_label(s, c) for s, c in self.held_out} if split == "train" else set()
        return [k for k in range(NUM_CLASSES) if k not in held]


def _cfg(name, resolution, num_train, num_test, held_out=HELD_OUT):
    kept = "all 12 pairs" if not held_out else f"{len(held_out)} pairs held out of train"
    return SceneClassesConfig(name=name, resolution=resolution, num_train=num_train,
                              num_test=num_test, held_out=tuple(held_out),
                              description=f"{resolution}px single objects, {kept}")


class SceneClasses(tfds.core.GeneratorBasedBuilder):
    """One rendered object per image, labelled with its shape x colour class."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        _cfg("tiny", 16, 108, 48),
        _cfg("tiny_all", 16, 108, 48, held_out=()),
        _cfg("16px", 16, 12_000, 1_200),
        _cfg("16px_all", 16, 12_000, 1_200, held_out=()),
        _cfg("32px", 32, 12_000, 1_200),
        _cfg("32px_all", 32, 12_000, 1_200, held_out=()),
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # as in clevr_positions: tfds's lookup needs importlib_resources outside its own package
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        scalar = tfds.features.Tensor(shape=(), dtype=np.int32)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[1],
            disable_shuffling=True,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(r, r, 3), dtype=np.uint8),
                "label": scalar, "shape": scalar, "colour": scalar,
                "position": tfds.features.Tensor(shape=(2,), dtype=np.float32),
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


def make_example(config: SceneClassesConfig, split: str, index: int) -> dict:
    """Example ``index`` of ``split``, a pure function of its inputs."""
    pairs = config.pairs(split)
    label = pairs[index % len(pairs)]
    shape, colour = class_name(label)
    rng = np.random.default_rng([config.seed, _SPLITS[split], index])
    # placement depends on the shape and size, so draw until the object is large
    scene = render.sample_scene(rng, 1, shapes=(shape,))
    while scene.size[0] != _LARGE:
        scene = render.sample_scene(rng, 1, shapes=(shape,))
    scene = dataclasses.replace(
        scene, color=np.array([list(render.COLORS).index(colour)], np.int32))
    return {
        "image": render.render(scene, config.resolution),
        "label": np.int32(label),
        "shape": np.int32(SHAPES.index(shape)),
        "colour": np.int32(COLOURS.index(colour)),
        "position": scene.centers[0].astype(np.float32),
    }


def config_names() -> list[str]:
    return builders.config_names(SceneClasses)


def prepare(config_name: str, data_dir: str) -> SceneClasses:
    """Builds ``scene_classes/<config_name>`` under ``data_dir`` (or reuses it)."""
    return builders.prepare(SceneClasses, config_name, data_dir)


def data_source(config_name: str, split: str, data_dir: str):
    """Random-access source (``len(src)``, ``src[i]`` -> dict of numpy arrays) of a split."""
    return builders.data_source(SceneClasses, config_name, split, data_dir, _SPLITS)


def main(argv=None) -> None:
    builders.build_main(SceneClasses, "32px", argv)


if __name__ == "__main__":
    main()
