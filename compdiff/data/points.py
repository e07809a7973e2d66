"""A user's own dataset: a fixed array of points ``x [n, d]`` read from a ``.npz`` file.

Training reads it as a data source with the oracles' interface,
``.sample(key, num)``: each minibatch is ``num`` rows drawn uniformly *with
replacement*,

    i_1..i_num ~ U{0..n-1} (iid),    batch = x[i_1..i_num],

so the loss is an unbiased estimate of the loss on the empirical distribution
of the points, and one training step code serves oracles and files alike.
:class:`Points` is a pytree whose leaf is the array: passed as an argument
to a jitted step it is data, not a compile-time constant (no recompiling,
nor a copy of the dataset in the compiled program).

The file holds the points under key ``x``; a file with exactly one array may
name it anything (``np.savez(path, pts)`` stores ``arr_0``), and a ``.npy``
file is taken as that one array. The points must be finite, real, ``[n, d]``
with ``n >= 2`` and ``d >= 1``; they are used as float32. The diffusion
schedules assume data of roughly unit scale (``x_T`` is close to
``N(0, I)``), so standardize points that are far from it.
"""

from __future__ import annotations

import os

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray
KEY = "x"


@flax.struct.dataclass
class Points:
    """``n`` points in ``R^d`` as a data source; ``name`` labels the models trained on them."""

    x: Array  # [n, d] float32
    name: str = flax.struct.field(pytree_node=False, default="points")

    @property
    def dim(self) -> int:
        return self.x.shape[-1]

    @property
    def num(self) -> int:
        return self.x.shape[0]

    def sample(self, key: Array, num: int) -> Array:
        """``[num, d]`` rows drawn uniformly with replacement (``num`` static under jit)."""
        return self.x[jax.random.randint(key, (num,), 0, self.num)]


def _read_array(path: str) -> np.ndarray:
    """The points array stored in ``path`` (validated by :func:`load`)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises OSError, ValueError, BadZipFile, ... for a bad file
        raise ValueError(f"points file {path}: cannot read it as .npz or .npy "
                         f"({type(e).__name__}: {e})") from e
    if isinstance(loaded, np.ndarray):  # a .npy file: its one array
        return loaded
    with loaded:
        keys = list(loaded.files)
        if KEY in keys:
            key = KEY
        elif len(keys) == 1:
            key = keys[0]
        else:
            raise ValueError(f"points file {path}: expected the points under key {KEY!r} (or a "
                             f"file with a single array), found arrays {keys}")
        try:
            return loaded[key]
        except Exception as e:  # object arrays need pickle; a damaged member fails to inflate
            raise ValueError(f"points file {path}: cannot read array {key!r} "
                             f"({type(e).__name__}: {e})") from e


def load(path: str) -> Points:
    """The points stored in ``path``, validated; named after the file's stem.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a
    file that holds no usable ``[n, d]`` array, each a one-line message naming
    the file and the problem.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"points file {path}: no such file")
    x = _read_array(path)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"points file {path}: expected real numbers, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"points file {path}: expected an [n, d] array of n points in d "
                         f"dimensions, got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"points file {path}: expected at least 2 points, got {x.shape[0]}")
    with np.errstate(over="ignore"):  # float64 values beyond float32 become inf: caught below
        x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(f"points file {path}: {int(bad.sum())} non-finite values (NaN or inf "
                         f"in float32) in {len(rows)} of {len(x)} rows, the first in row {rows[0]}")
    return Points(x=jnp.asarray(x), name=os.path.splitext(os.path.basename(path))[0])
