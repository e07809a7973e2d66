"""``clevr_positions``: CLEVR-like scenes labelled with object positions (tfds, no download).

What it is. Every example is a scene rendered by :mod:`compdiff.data.render`: 1 to 5 objects
(cubes by default, as in the CLEVR experiments of "Reduce, Reuse, Recycle", Du et al.
2023, sec. 5.2; the ``32px_shapes`` config adds spheres and cylinders) with one of the
8 CLEVR colours and 2 CLEVR sizes, resting on a gray floor, seen by a fixed perspective
camera that looks down at the floor at an angle, with Lambertian shading and cast
shadows. Objects never overlap and always lie fully inside the image.

Labels. ``positions[k]`` is the image-plane centre of object ``k`` (the projection of its
3D bounding-volume centre, :attr:`render.Scene.centers`): ``(u, v) = (column / width,
row / height)`` in ``[0, 1]^2``, ``u`` to the right and ``v`` downward. ``count`` is the
number of objects; ``shape``, ``color`` and ``size`` index ``render.SHAPES``,
``list(render.COLORS)`` and ``list(render.SIZES)``.

Configs (train / test examples): ``tiny`` 16 px 256 / 64 (tests), ``16px`` 20_000 / 1_000,
``32px`` 50_000 / 2_000 (the CPU setting), ``64px`` 200_000 / 5_000 (as RRR),
``32px_shapes`` 32 px with cubes, spheres and cylinders, 50_000 / 2_000. The number of
objects per scene is uniform on ``[min_objects, max_objects]`` = ``[1, 5]``.

Determinism. Example ``i`` of split ``s`` (train = 0, test = 1) is rendered from
``np.random.default_rng([seed, s, i])``, so a config always yields identical arrays,
whatever the generation order. The example keys are ``i`` and shuffling is disabled, so
``data_source(...)[i]`` is example ``i`` (equal to ``make_example(config, s, i)``).

Building (a tqdm progress bar shows while generating)::

    python -m compdiff.data.clevr_positions --config=32px --data_dir=/path/to/tfds

or from Python ``prepare("32px", data_dir)`` / ``data_source("32px", "train", data_dir)``;
records come back as dicts of numpy arrays (``array_record`` files, TensorFlow is never
imported).

Why hand-written. CLEVR itself is rendered with Blender (facebookresearch/clevr-dataset-gen)
and no pip-installable library renders CLEVR-like scenes without it, while the released
CLEVR-position data of Composable Diffusion (read by :func:`load_composable_npz`) is
128 px and 30k images with one labelled position each. A small vectorized numpy ray
caster gives any resolution, any size, full multi-object labels and no download.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from compdiff.data import builders, render

_SPLITS = {"train": 0, "test": 1}


@dataclasses.dataclass(eq=False)
class ClevrPositionsConfig(tfds.core.BuilderConfig):
    """A ``clevr_positions`` configuration."""

    resolution: int = 32
    num_train: int = 50_000
    num_test: int = 2_000
    min_objects: int = 1
    max_objects: int = 5
    shapes: tuple[str, ...] = ("cube",)
    seed: int = 0


def _cfg(name, resolution, num_train, num_test, shapes=("cube",), description=""):
    return ClevrPositionsConfig(
        name=name,
        description=description or f"{resolution}px CLEVR-like {'/'.join(shapes)} scenes",
        resolution=resolution,
        num_train=num_train,
        num_test=num_test,
        shapes=tuple(shapes),
    )


class ClevrPositions(tfds.core.GeneratorBasedBuilder):
    """CLEVR-like scenes rendered in numpy, labelled with each object's image position."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        _cfg("tiny", 16, 256, 64, description="16px, 256 / 64 examples, for tests"),
        _cfg("16px", 16, 20_000, 1_000),
        _cfg("32px", 32, 50_000, 2_000),
        _cfg("64px", 64, 200_000, 5_000),
        _cfg("32px_shapes", 32, 50_000, 2_000, shapes=render.SHAPES),
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds's own lookup needs the optional `importlib_resources` package for builders
        # outside tensorflow_datasets; the plain file path is what it falls back to anyway.
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[1],
            # examples are independent draws already; unshuffled, src[i] is example i
            disable_shuffling=True,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(r, r, 3), dtype=np.uint8),
                    "positions": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
                    "count": tfds.features.Tensor(shape=(), dtype=np.int32),
                    "shape": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "color": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "size": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        c = self.builder_config
        return {
            "train": self._generate_examples(_SPLITS["train"], c.num_train),
            "test": self._generate_examples(_SPLITS["test"], c.num_test),
        }

    def _generate_examples(self, split_id: int, num: int):
        c = self.builder_config
        for i in range(num):
            yield i, make_example(c, split_id, i)


def make_example(config: ClevrPositionsConfig, split_id: int, index: int) -> dict:
    """Example ``index`` of split ``split_id`` (train 0, test 1), a pure function of its inputs."""
    rng = np.random.default_rng([config.seed, split_id, index])
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    scene = render.sample_scene(rng, n, shapes=config.shapes)
    return {
        "image": render.render(scene, config.resolution),
        "positions": scene.centers.astype(np.float32),
        "count": np.int32(n),
        "shape": scene.shape.astype(np.int32),
        "color": scene.color.astype(np.int32),
        "size": scene.size.astype(np.int32),
    }


def config_names() -> list[str]:
    return builders.config_names(ClevrPositions)


def prepare(config_name: str, data_dir: str) -> ClevrPositions:
    """Builds ``clevr_positions/<config_name>`` under ``data_dir`` (or reuses it)."""
    return builders.prepare(ClevrPositions, config_name, data_dir)


def data_source(config_name: str, split: str, data_dir: str):
    """Random-access source (``len(src)``, ``src[i]`` -> dict of numpy arrays) of a split."""
    return builders.data_source(ClevrPositions, config_name, split, data_dir, _SPLITS)


def load_composable_npz(path: str) -> dict:
    """Reads Composable Diffusion's released CLEVR-position ``.npz`` files.

    Format (Liu et al. 2022, github.com/energy-based-model/Compositional-Visual-Generation-
    with-Composable-Diffusion-Models-PyTorch): ``composable_diffusion/image_datasets.py``
    (``Clevr2DPosDataset``) and ``classifier/datasets.py`` load
    ``data['ims']`` (uint8 ``[N, H, W, 3]``, 128 px in the released
    ``clevr_pos_data_128_30000.npz`` listed in ``composable_diffusion/download.py``) and
    ``data['coords_labels']``: ``[N, 2]`` in the training file (one labelled object per
    image, used as a 2-vector ``y``), ``[N, k, 2]`` in evaluation files (read the same way
    by ``scripts/best_of_n_on_sam_dataset.py`` of rainorangelemon/complift-2d-and-clevr).

    Convention. Their ``(x, y)`` is in ``[0, 1]^2`` with ``x`` to the right (their sampling
    script's "horizontal" prompt varies the first coordinate) and ``y`` **upward**:
    complift-2d-and-clevr, which checks the positions on Composable Diffusion's model
    samples, maps a label to pixels as ``column = x * W``, ``row = (1 - y) * H``
    (``scripts/label_images_clevr_pos.py`` and ``show_image`` in
    ``scripts/best_of_n_on_sam_dataset.py``). We return ``(u, v) = (x, 1 - y)``.

    Returns ``{"images": uint8 [N, H, W, 3], "positions": float32 [N, k, 2]}`` (``k = 1``
    for the training file).
    """
    with np.load(path, allow_pickle=False) as data:
        for key in ("ims", "coords_labels"):
            if key not in data.files:
                raise ValueError(
                    f"{path}: not a Composable Diffusion CLEVR-position file: missing array "
                    f"{key!r} (found {sorted(data.files)})"
                )
        ims = np.asarray(data["ims"])
        coords = np.asarray(data["coords_labels"], dtype=np.float32)
    if ims.ndim != 4 or ims.shape[-1] not in (3, 4):
        raise ValueError(f"{path}: 'ims' must be [N, H, W, 3], got shape {ims.shape}")
    if coords.ndim == 2:
        coords = coords[:, None, :]
    if coords.ndim != 3 or coords.shape[-1] < 2 or coords.shape[0] != ims.shape[0]:
        raise ValueError(
            f"{path}: 'coords_labels' must be [N, 2] or [N, k, 2] with N = {ims.shape[0]}, "
            f"got shape {coords.shape}"
        )
    if ims.dtype != np.uint8:
        ims = np.clip(np.round(ims), 0, 255).astype(np.uint8)
    coords = coords[..., :2]
    positions = np.stack([coords[..., 0], 1.0 - coords[..., 1]], axis=-1).astype(np.float32)
    return {"images": ims[..., :3], "positions": positions}


def main(argv=None) -> None:
    builders.build_main(ClevrPositions, "32px", argv)


if __name__ == "__main__":
    main()
