"""Compositional sculpting of GFlowNets (Garipov et al. 2023), exact on the grid.

Base GFlowNets with policies ``P_1..P_m`` sample ``p_1..p_m``. The prior is
their mixture ``p~(tau) = (1/m) sum_i p_i(tau)``, the label ``y_1`` of a
trajectory is the base model that made it, and observations of an object are
i.i.d. ``p~(y = i | x) = q_i(x) = p_i(x) / sum_j p_j(x)``. Conditioning on
``y_1 = i_1, ..., y_n = i_n`` gives the composition

    p(x | y_1..y_n) ∝ prod_k p_{i_k}(x) / (sum_j p_j(x))^(n - 1)

harmonic mean ``(1, 2)``, contrast ``(1, 1)`` and ``(2, 2)``, the mixture for
``n = 0``. Its forward policy is the mixture of the base policies weighted by
``p(y_1 = i | s)``, times the classifier ratio (the paper's guidance):

    P(s' | s, y) ∝ sum_i p(y_1 = i | s) P_i(s' | s) * Q(y | s') / Q(y | s)

where ``Q(y | s')`` is the non-terminal classifier for a move and the terminal
one, ``prod_k q_{i_k}(x)``, for ``stop`` (``s' = x = s``). With the exact
classifier the ratio makes the policy normalized by itself (``Q`` is a
martingale); a learned one is not, so rows are renormalized, as the authors'
code does. Everything is float64 numpy on whole ``[H, H, ...]`` tables.

Classifier tables: ``nonterminal [H, H, m^n]`` holds ``log Q(y_1..y_n | s)``
(``y_1`` the most significant index, so the first ``k`` labels' marginal sums
the trailing axis); ``terminal [H, H, m]`` holds ``log q(y | x)``.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.special import logsumexp

from compdiff.gflownet import env


def check_observations(observations, m: int) -> tuple[int, ...]:
    """Labels as 0-based ints from the 1-based ``(i_1, ..., i_n)`` the paper writes."""
    obs = tuple(observations)
    for i in obs:
        if int(i) != i or not 1 <= i <= m:
            raise ValueError(f"observation {i!r} in {obs}: labels are 1..{m} (one per base model)")
    return tuple(int(i) - 1 for i in obs)


def target(dists: list[np.ndarray], observations) -> np.ndarray:
    """The composition by enumeration from base distributions ``p_i [H, H]`` (normalized)."""
    obs = check_observations(observations, len(dists))
    p = np.stack([d / d.sum() for d in dists], axis=-1)
    total = p.sum(-1)
    out = np.prod([p[..., i] for i in obs], axis=0) / total ** (len(obs) - 1) if obs else total
    return out / out.sum()


def label_products(q: np.ndarray, n: int) -> np.ndarray:
    """``[H, H, m^n]``: ``prod_k q_{y_k}(x)`` per label tuple (C order), from ``q [H, H, m]``."""
    m = q.shape[-1]
    cols = [np.prod([q[..., i] for i in ys], axis=0) if ys else np.ones(q.shape[:-1])
            for ys in itertools.product(range(m), repeat=n)]
    return np.stack(cols, axis=-1)


def exact_classifier(policies: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The classifier the paper's training converges to, by enumeration over the DAG.

    ``q_i(x) = p_i(x) / sum_j p_j(x)`` from the policies' exact terminal
    distributions; for a state ``s`` visited with probability ``V_i(s)`` by policy i,

        Q(y_1 = i, y_2..y_n | s) = V_i(s) / sum_j V_j(s) * E_{P_i}[prod_{k>=2} q_{y_k}(x) | s]

    (``y_1`` is the label of the trajectory, later labels the terminal
    classifier's). Returns the log tables ``(nonterminal [H, H, m^n], terminal [H, H, m])``.
    """
    if n < 1:
        raise ValueError(f"classifier over n={n} observations: need n >= 1")
    p = np.stack([env.terminal_distribution(pol) for pol in policies], axis=-1)
    v = np.stack([env.visits(pol) for pol in policies], axis=-1)
    q = p / p.sum(-1, keepdims=True)
    w = v / v.sum(-1, keepdims=True)
    later = label_products(q, n - 1)
    joint = np.stack([w[..., i, None] * env.expectation(pol, later)
                      for i, pol in enumerate(policies)], axis=-2)
    h = q.shape[0]
    with np.errstate(divide="ignore"):
        return np.log(joint.reshape(h, h, -1)), np.log(q)


def marginal(nonterminal: np.ndarray, m: int, k: int) -> np.ndarray:
    """``[H, H, m^k]`` log-probabilities of the first ``k`` labels from the ``m^n`` joint."""
    h = nonterminal.shape[0]
    return logsumexp(nonterminal.reshape(h, h, m ** k, -1), axis=-1)


def _label_index(obs: tuple[int, ...], m: int) -> int:
    return int(np.ravel_multi_index(obs, (m,) * len(obs))) if obs else 0


def composed_policy(policies: list[np.ndarray], nonterminal: np.ndarray, terminal: np.ndarray,
                    observations) -> np.ndarray:
    """``[H, H, 3]`` sculpted policy for ``y = observations`` (module docstring)."""
    m = len(policies)
    obs = check_observations(observations, m)
    h = policies[0].shape[0]
    n = round(np.log(nonterminal.shape[-1]) / np.log(m))
    if m ** n != nonterminal.shape[-1] or len(obs) > n:
        raise ValueError(f"classifier over {nonterminal.shape[-1]} label tuples cannot "
                         f"condition on {len(obs)} observations of {m} models")
    with np.errstate(divide="ignore"):
        log_pol = np.log(np.stack([env.check_policy(pol) for pol in policies], axis=-2))
    log_w = marginal(nonterminal, m, 1)
    mix = logsumexp(log_w[..., None] + log_pol, axis=-2)  # [H, H, 3]
    if obs:
        here = marginal(nonterminal, m, len(obs))[..., _label_index(obs, m)]
        stop = np.sum([terminal[..., i] for i in obs], axis=0)
        # A child off the grid reads 0 here; its move has log-probability -inf already.
        child_x = np.zeros_like(here)
        child_x[:-1] = here[1:]
        child_y = np.zeros_like(here)
        child_y[:, :-1] = here[:, 1:]
        mix = mix + np.stack([child_x, child_y, stop], axis=-1) - here[..., None]
    mix = np.where(env.action_mask(h), mix, -np.inf)
    return np.exp(mix - logsumexp(mix, axis=-1, keepdims=True))


def swap_labels(nonterminal: np.ndarray, terminal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The classifier with base labels ``1 <-> 2`` exchanged (m = 2), a deliberately wrong one."""
    h = terminal.shape[0]
    n = round(np.log2(nonterminal.shape[-1]))
    joint = nonterminal.reshape((h, h) + (2,) * n)[(...,) + (slice(None, None, -1),) * n]
    return joint.reshape(h, h, -1), terminal[..., ::-1]


def l1(p: np.ndarray, q: np.ndarray) -> float:
    """``sum_x |p(x) - q(x)|`` (twice the total variation)."""
    return float(np.abs(np.asarray(p) - np.asarray(q)).sum())
