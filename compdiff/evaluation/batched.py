"""One batched apply for every evaluator: a jitted function over aligned array slices.

Evaluators run a classifier (a judge, a presence classifier, a feature extractor) on
thousands of images in fixed-size batches. :func:`batched_apply` is the one loop they
share: it slices the inputs along axis 0, pads the last, shorter slice up to
``batch_size`` by repeating its last row (so a jitted ``fn`` compiles once per input
structure, not once more for the remainder's shape), drops the padded rows from the
outputs, and concatenates them on the host. Outputs may be any pytree of arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def batched_apply(fn: Callable[..., Any], *arrays: Any, batch_size: int = 256) -> Any:
    """``fn(*arrays)`` computed ``batch_size`` rows at a time; a pytree of numpy arrays.

    Every array must have the same number of rows; ``fn`` must map ``B`` input rows to
    ``B`` output rows in each output leaf.
    """
    if not arrays:
        raise ValueError("batched_apply needs at least one array")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("arrays must have the same number of rows, got "
                         f"{[len(a) for a in arrays]}")
    if n == 0:
        raise ValueError("batched_apply got zero rows")
    outs = []
    for start in range(0, n, batch_size):
        chunk = [np.asarray(a[start:start + batch_size]) for a in arrays]
        rows = len(chunk[0])
        if n > batch_size and rows < batch_size:  # the compiled shape, not a new one
            chunk = [np.concatenate([c, np.repeat(c[-1:], batch_size - rows, axis=0)])
                     for c in chunk]
        outs.append(jax.tree.map(lambda o, r=rows: np.asarray(o)[:r], fn(*chunk)))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outs)
