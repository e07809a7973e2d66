"""Paired comparisons: the tables' claims tested on outcomes that share their randomness.

Within a cell every sampler starts from the same initial noise and the same conditions
(the annealed driver draws its initial noise from ``fold_in(key, 0)``, so one key per cell
is shared by all its samplers): sample ``i`` of sampler A and sample ``i`` of sampler B
differ only by the sampler. Comparing them pair by pair removes the variance the two
share, which two independent proportions would pay twice.

* Binary per-image outcomes (judged correct or not): the exact McNemar test, a binomial
  test on the discordant pairs (:func:`mcnemar`).
* Continuous per-sample metrics (a log-density): a paired bootstrap of the mean
  difference (:func:`paired_bootstrap`).

:func:`compare` returns a claim record for a table's JSON: the difference, its 95%
bootstrap interval, the p-value and the verdict (``holds`` / ``fails`` / ``unresolved``
at ``alpha = 0.05``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
BOOTSTRAP = 2000


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes ``a[i]``, ``b[i]``.

    Only discordant pairs carry information: with ``n01`` pairs where only ``b`` holds
    and ``n10`` where only ``a`` does, under the null each discordant pair is a fair
    coin, so ``p = min(1, 2 P(Binomial(n01 + n10, 1/2) <= min(n01, n10)))``.
    """
    a, b = _paired(a, b)
    a, b = a.astype(bool), b.astype(bool)
    n10, n01 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = n10 + n01
    if n == 0:
        return 1.0
    # The binomial CDF, not sum(comb(n, i)) / 2**n: 2.0**n overflows past n = 1023 pairs.
    tail = float(stats.binom.cdf(min(n10, n01), n, 0.5))
    return min(1.0, 2.0 * tail)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], num: int = BOOTSTRAP,
                     seed: int = 0, level: float = 0.95) -> tuple[float, tuple[float, float],
                                                                  float]:
    """``(mean(a - b), (low, high), p)``: the percentile interval of the mean paired
    difference over ``num`` resamples of the pairs, and the two-sided bootstrap p-value
    ``min(1, 2 min(P*(mean <= 0), P*(mean >= 0)))`` with the usual ``+1`` correction
    (never 0 from a finite number of resamples)."""
    a, b = _paired(a, b)
    d = a.astype(np.float64) - b.astype(np.float64)
    if not np.all(np.isfinite(d)):
        raise ValueError("paired_bootstrap needs finite outcomes; clip or drop non-finite ones")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(num, len(d)))].mean(axis=1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    below = (np.sum(means <= 0) + 1) / (num + 1)
    above = (np.sum(means >= 0) + 1) / (num + 1)
    return float(d.mean()), (float(low), float(high)), float(min(1.0, 2 * min(below, above)))


def verdict(estimate: float, p: float, alpha: float = ALPHA) -> str:
    """``holds`` (A better, ``p < alpha``), ``fails`` (B better, ``p < alpha``) or
    ``unresolved``."""
    if p >= alpha or estimate == 0:
        return "unresolved"
    return "holds" if estimate > 0 else "fails"


def compare(claim: str, a_label: str, a: Sequence, b_label: str, b: Sequence,
            binary: bool) -> dict:
    """The record of the claim "A beats B" on paired outcomes (higher is better).

    ``binary``: per-image correct/incorrect (McNemar p-value); otherwise a continuous
    per-sample metric (bootstrap p-value). The interval is the paired bootstrap's either way.
    """
    estimate, interval, p_boot = paired_bootstrap(a, b)
    p = mcnemar(a, b) if binary else p_boot
    result = verdict(estimate, p)
    text = (f"{claim}: {result} ({a_label} - {b_label} = {estimate:+.3f}, 95% paired "
            f"interval [{interval[0]:+.3f}, {interval[1]:+.3f}], "
            f"{'McNemar' if binary else 'bootstrap'} p = {p:.3g}, {len(np.asarray(a))} pairs).")
    return {"claim": claim, "a": a_label, "b": b_label, "estimate": estimate,
            "interval": list(interval), "p_value": p,
            "test": "exact McNemar" if binary else "paired bootstrap",
            "num_pairs": int(len(np.asarray(a))), "verdict": result, "text": text}


def _paired(a: Sequence, b: Sequence) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape or not a.size:
        raise ValueError(f"paired outcomes need equal, non-zero lengths; got {a.size} and "
                         f"{b.size}")
    return a, b
