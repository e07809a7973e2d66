"""Minibatches of image datasets for training: tfds data sources through a grain pipeline.

A dataset is a random-access tfds source (``tfds.data_source``, array_record,
no TensorFlow); an *example function* turns one record into a training example
(``{"x": float32 [H*W*C] in [-1, 1], "cond": float32 [c], ...}``), with its
own seeded ``np.random.Generator`` for random choices such as which object's
position conditions the image. The pipeline is grain's ``MapDataset``:

    source -> shuffle(seed) -> repeat -> random_map -> rows of this process -> batch

Every step of it is random access, so batch ``n`` is a pure function of
``(seed, n)``: a run resumed from the checkpoint of step ``n`` reads exactly
the batches an uninterrupted run reads. ``shuffle`` draws a new permutation
every epoch. Multi-host: global batch ``n`` is the examples ``n B .. n B + B - 1``
of that one stream, whatever the number of processes ``P``; process ``i``
reads (and prepares) only its rows ``i B/P .. (i + 1) B/P - 1`` of each, which
``jax.make_array_from_process_local_data`` places on its devices. So ``P``
processes train on the batches of one process. Batches are read ahead by
grain's threads and placed on the devices as one global array sharded over
the batch axis.

Images are flat vectors ``[B, H*W*C]``: the samplers, compositions and
diagnostics work on ``[B, d]`` arrays, and the UNet reshapes internally. The pixel
conversions ``to_unit_range`` / ``to_uint8`` live in :mod:`.pixels` (below the example
functions, :mod:`.examples`, which use them) and are re-exported here.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from compdiff.data import examples
from compdiff.data.examples import ExampleFn
from compdiff.data.pixels import to_uint8, to_unit_range  # noqa: F401  (re-exported)


class ImageBatches:
    """Global batches ``n = start, start + 1, ...`` of ``example_fn`` over ``source``.

    ``batch_size`` is global; this process builds its ``batch_size / processes``
    rows of each (``processes`` / ``index``: default JAX's process count and index).
    """

    def __init__(self, source: Any, example_fn: ExampleFn, batch_size: int, seed: int,
                 sharding: NamedSharding | None = None, num_threads: int = 2, *,
                 processes: int | None = None, index: int | None = None):
        processes = jax.process_count() if processes is None else processes
        index = jax.process_index() if index is None else index
        if batch_size % processes:
            raise ValueError(f"batch_size {batch_size} must divide over {processes} processes")
        self.batch_size, self.sharding, self.num_threads = batch_size, sharding, num_threads
        # imported here: grain costs a third of a second at import, which every command-line
        # start (sample.py, the error paths) would pay before it reads any data
        import grain

        examples = (grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
                    .random_map(example_fn, seed=seed + 1))
        rows = batch_size // processes
        if processes == 1:
            mine = examples
        else:  # this process's row k of batch n is example n B + index B/P + k
            mine = grain.MapDataset.range(len(examples) // batch_size * rows).map(
                lambda j: examples[(j // rows) * batch_size + index * rows + j % rows])
        self._batches = mine.batch(rows)

    def get(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of batch ``step`` (numpy, for inspection and tests)."""
        return self._batches[step]

    def iterate(self, start: int) -> Iterator[dict[str, jax.Array]]:
        """Batches ``start, start + 1, ...`` as global device arrays, read ahead by threads."""
        import grain

        options = grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=4)
        for batch in self._batches[start:].to_iter_dataset(options):
            yield {k: self._place(v) for k, v in batch.items()}

    def _place(self, rows: np.ndarray) -> jax.Array:
        if self.sharding is None:
            return jax.numpy.asarray(rows)
        return jax.make_array_from_process_local_data(self.sharding, rows)


# tfds builders of the project, by name: module with ``data_source(config, split, data_dir)``.
BUILDERS = {"clevr_positions": "compdiff.data.clevr_positions",
            "digits": "compdiff.data.digits",
            "scene_classes": "compdiff.data.scene_classes",
            "captioned_scenes": "compdiff.data.captioned_scenes",
            "imagenet": "compdiff.data.imagenet"}


class ImageSource:
    """An image dataset for training: a tfds builder's split and an example function.

    ``dim`` (``H*W*C``), ``image_shape`` and ``cond_dim`` (the length of the
    example's ``cond``, 0 when it has none) are read from the first example.
    """

    def __init__(self, source: Any, example_fn: ExampleFn, data_dir: str):
        self.source, self.example_fn, self.data_dir = source, example_fn, data_dir
        first = source[0]
        self.image_shape = tuple(int(n) for n in np.shape(first["image"]))
        example = example_fn(first, np.random.default_rng(0))
        self.dim = int(np.size(example["x"]))
        self.cond_dim = int(np.size(example["cond"])) if "cond" in example else 0

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict, split: str = "train") -> ImageSource:
        """``data.source`` (a builder in :data:`BUILDERS`), ``data.builder_config``,
        ``data.data_dir`` (built there first if needed) and ``data.example``."""
        if data.source not in BUILDERS:
            raise ValueError(f"unknown data.source {data.source!r}; known: {sorted(BUILDERS)}")
        data_dir = os.path.abspath(os.path.expanduser(data.data_dir))
        builder = importlib.import_module(BUILDERS[data.source])
        source = builder.data_source(data.builder_config, split, data_dir)
        return cls(source, examples.get(data.example), data_dir)

    def condition_stats(self, num: int = 4096, seed: int = 0, floor: float = 1e-3
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation (at least ``floor``) of the examples' ``cond``
        ``[cond_dim]`` each, over ``num`` examples drawn as training draws them (the
        records uniformly, the example's own randomness by ``seed``)."""
        if not self.cond_dim:
            raise ValueError("condition_stats: the examples carry no condition ('cond')")
        rng = np.random.default_rng(seed)
        rows = rng.integers(len(self.source), size=num)
        conds = np.stack([np.ravel(self.example_fn(self.source[int(i)], rng)["cond"])
                          for i in rows]).astype(np.float64)
        return conds.mean(0), np.maximum(conds.std(0), floor)

    def batches(self, batch_size: int, seed: int,
                sharding: NamedSharding | None = None) -> ImageBatches:
        return ImageBatches(self.source, self.example_fn, batch_size, seed, sharding)
