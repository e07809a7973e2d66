"""Timing helpers for the benchmark scripts (``scripts/bench_*.py``).

Every benchmark reports throughput next to a roofline measured in the same run
(a chain of dependent jitted matmuls), so numbers from different machines and
loads can be compared as fractions of what the machine did at that moment.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def _times(fn: Callable[[], Any], repeats: int) -> list[float]:
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls after one warm-up (compile) call."""
    return min(_times(fn, repeats))


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """The median of ``repeats`` timed calls after one warm-up (compile) call."""
    return statistics.median(_times(fn, repeats))


def median_seconds_interleaved(fns: list[Callable[[], Any]], repeats: int) -> list[float]:
    """Median seconds of each of ``fns``, timed in turn within every repeat, so that load
    from other processes falls on all of them alike."""
    for fn in fns:
        jax.block_until_ready(fn())
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def matmul_flops_per_second(m: int, k: int, repeats: int, chain: int = 20,
                            timer: Callable = best_seconds) -> float:
    """FLOP/s of ``chain`` dependent jitted ``[m, k] @ [k, k]`` f32 matmuls (2 m k^2 each).

    The chain amortizes dispatch; the right factor is orthogonal, so the chained
    products neither blow up nor vanish.
    """
    a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
    b = jnp.linalg.qr(jax.random.normal(jax.random.key(1), (k, k), jnp.float32))[0]
    run = jax.jit(lambda a, b: jax.lax.scan(lambda x, _: (x @ b, None), a, None,
                                            length=chain)[0])
    return 2.0 * m * k * k * chain / timer(lambda: run(a, b), repeats)


def compiled_flops(compiled: Any) -> float:
    """XLA's FLOP count of a compiled computation (``jit(f).lower(...).compile()``)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"])


def flops(fn: Callable, *args) -> float:
    """XLA's FLOP count of ``jit(fn)(*args)``."""
    return compiled_flops(jax.jit(fn).lower(*args).compile())
