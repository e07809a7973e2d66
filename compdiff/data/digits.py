"""``digits``: scikit-learn's handwritten digits, upsampled, with a fixed held-out split (tfds).

What it is. ``sklearn.datasets.load_digits``: 1,797 real 8x8 scans of handwritten digits
(UCI "Optical Recognition of Handwritten Digits", 43 writers), grey levels 0..16, shipped
inside scikit-learn (no download). Ink is bright on a dark background, as in MNIST.

Pixels. A grey level ``g`` in 0..16 becomes ``round(g * 255 / 16)`` (uint8), and the 8x8
scan is upsampled by pixel repetition (nearest neighbour) to 16 or 32 px, 1 channel. Nearest,
not bilinear, because it invents no grey levels: every pixel is one of the scan's own 17
levels, and averaging each ``f x f`` block gives back the scan exactly, so a sample can be
compared with the real data at the scan's resolution. The UNet takes any channel count.

Split. Fixed and stratified: held-out ``test`` has 297 scans (29 or 30 per digit, in
proportion to the digit's count, remainders to the largest fractions), ``train`` the other
1,500. Within each digit the held-out scans are the first of a permutation drawn from
``np.random.default_rng([SPLIT_SEED, digit])``, so the split is a pure function of this file
(not of a scikit-learn version's shuffling code).

Records: ``image`` uint8 ``[R, R, 1]``, ``label`` int32 (the digit), ``index`` int32 (the row
in ``load_digits()``), in increasing ``index`` order within a split (shuffling disabled:
``data_source(...)[i]`` is the i-th).

Configs: ``16px`` (factor 2) and ``32px`` (factor 4). Building takes a second::

    python -m compdiff.data.digits --config=32px --data_dir=/path/to/tfds
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from compdiff.data import builders

NUM_CLASSES = 10
NUM_TEST = 297
SPLIT_SEED = 0
_SPLITS = ("train", "test")


@dataclasses.dataclass(eq=False)
class DigitsConfig(tfds.core.BuilderConfig):
    """A ``digits`` configuration: the output resolution (a multiple of 8)."""

    resolution: int = 32


def scans() -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [1797, 8, 8] in 0..255, labels int32 [1797])`` from scikit-learn."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int32)


def upsample(images: np.ndarray, resolution: int) -> np.ndarray:
    """Nearest-neighbour upsampling ``[..., 8, 8]`` -> ``[..., R, R, 1]`` (``R``: 8 k)."""
    if resolution % 8 or resolution < 8:
        raise ValueError(f"digits resolution must be a positive multiple of 8, got {resolution}")
    f = resolution // 8
    up = np.repeat(np.repeat(np.asarray(images), f, axis=-2), f, axis=-1)
    return up[..., None]


def split_indices(labels: np.ndarray, num_test: int = NUM_TEST, seed: int = SPLIT_SEED
                  ) -> dict[str, np.ndarray]:
    """Stratified ``{"train", "test"}`` row indices (sorted) with ``num_test`` held out."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    share = num_test * counts / counts.sum()
    take = np.floor(share).astype(int)
    # largest remainders get the leftover scans (ties: the smaller digit), so sum == num_test
    order = sorted(range(len(classes)), key=lambda k: (-(share[k] - take[k]), k))
    for k in order[: num_test - take.sum()]:
        take[k] += 1
    test = []
    for k, c in enumerate(classes):
        rows = np.flatnonzero(labels == c)
        test.append(rows[np.random.default_rng([seed, int(c)]).permutation(len(rows))[:take[k]]])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return {"train": train, "test": test}


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits, upsampled, with a fixed stratified split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        DigitsConfig(name="16px", description="16 px (2x nearest)", resolution=16),
        DigitsConfig(name="32px", description="32 px (4x nearest)", resolution=32),
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # as in clevr_positions: tfds's lookup needs importlib_resources outside its own package
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[1],
            disable_shuffling=True,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(r, r, 1), dtype=np.uint8),
                "label": tfds.features.Tensor(shape=(), dtype=np.int32),
                "index": tfds.features.Tensor(shape=(), dtype=np.int32),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # shipped inside scikit-learn
        images, labels = scans()
        rows = split_indices(labels)
        return {s: self._generate_examples(images, labels, rows[s]) for s in _SPLITS}

    def _generate_examples(self, images, labels, rows):
        up = upsample(images[rows], self.builder_config.resolution)
        for k, i in enumerate(rows):
            yield int(i), {"image": up[k], "label": labels[i], "index": np.int32(i)}


def config_names() -> list[str]:
    return builders.config_names(Digits)


def prepare(config_name: str, data_dir: str) -> Digits:
    """Builds ``digits/<config_name>`` under ``data_dir`` (or reuses it)."""
    return builders.prepare(Digits, config_name, data_dir)


def data_source(config_name: str, split: str, data_dir: str):
    """Random-access source (``len(src)``, ``src[i]`` -> dict of numpy arrays) of a split."""
    return builders.data_source(Digits, config_name, split, data_dir, _SPLITS)


def main(argv=None) -> None:
    builders.build_main(Digits, "32px", argv)


if __name__ == "__main__":
    main()
