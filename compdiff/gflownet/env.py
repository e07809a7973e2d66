"""The 2D hypergrid: states, rewards, exact flows and exact dynamic programs over its DAG.

A state is a cell ``s = (x, y)`` of an ``H x H`` grid, indexed ``x * H + y``.
Every trajectory starts at ``(0, 0)``; the actions are ``+x``, ``+y`` (masked at
the grid's edge) and ``stop``, which ends it with the terminal object ``x = s``.
The state graph is a DAG whose depth is the anti-diagonal ``x + y``, so a
trajectory takes at most ``2H - 2`` moves and ``2H - 1`` actions.

A *policy table* holds ``P_F(a | s)`` for every state as an ``[H, H, 3]`` array
(action order ``+x, +y, stop``). The backward policy is uniform over parents,
``P_B(s | s') = 1 / n_par(s')`` with ``n_par(x, y) = [x > 0] + [y > 0]``, as in
the paper's grid runs. Everything here is exact, in float64 numpy:

* :func:`visits`: ``V(s) = P(trajectory passes s)``, forward over diagonals,
  ``V(s') = sum_{s -> s'} V(s) P_F(s' | s)``; :func:`terminal_distribution`
  is ``p(x) = V(x) P_F(stop | x)``.
* :func:`expectation`: ``G(s) = E[g(x) | at s]`` backward over diagonals,
  ``G(s) = P_F(stop | s) g(s) + sum_{s -> s'} P_F(s' | s) G(s')``.
* :func:`flow_policy`: the policy that samples ``R / Z`` exactly with the
  uniform ``P_B``: state flows ``F(s) = R(s) + sum_{s -> c} F(c) / n_par(c)``,
  ``P_F(c | s) = F(c) / (n_par(c) F(s))``, ``P_F(stop | s) = R(s) / F(s)``,
  ``Z = F(0, 0)``.

Each recursion runs over whole arrays ``2H - 1`` times (the DAG's depth); after
``k`` sweeps every cell within ``k`` diagonals of the recursion's start is final.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MOVE_X, MOVE_Y, STOP = 0, 1, 2
NUM_ACTIONS = 3


def check_size(h: int) -> int:
    if int(h) != h or h < 2:
        raise ValueError(f"grid size H={h!r}: need an integer >= 2")
    return int(h)


def num_steps(h: int) -> int:
    """Actions in the longest trajectory: ``2H - 2`` moves and one stop."""
    return 2 * h - 1


def action_mask(h: int) -> np.ndarray:
    """``[H, H, 3]`` bool: which actions are allowed in each state."""
    x, y = np.meshgrid(np.arange(h), np.arange(h), indexing="ij")
    return np.stack([x < h - 1, y < h - 1, np.ones_like(x, bool)], axis=-1)


def num_parents(h: int) -> np.ndarray:
    """``[H, H]`` int: ``n_par(x, y) = [x > 0] + [y > 0]`` (0 at the start state)."""
    x, y = np.meshgrid(np.arange(h), np.arange(h), indexing="ij")
    return (x > 0).astype(int) + (y > 0).astype(int)


def one_hot_states(h: int) -> np.ndarray:
    """``[H * H, 2H]`` float32 network input of every state: one-hot x, then one-hot y."""
    x, y = np.meshgrid(np.arange(h), np.arange(h), indexing="ij")
    eye = np.eye(h, dtype=np.float32)
    return np.concatenate([eye[x.ravel()], eye[y.ravel()]], axis=1)


# Log-reward functions of the paper's grid code, on u = 2 z / (H - 1) - 1 in [-1, 1]^2.
def _symmetric_shubert(u: np.ndarray) -> np.ndarray:
    """Shubert's function on |u|: a lattice of modes, symmetric about the grid's centre."""
    w, offset = 2.3, -7.15
    lo, hi = -186.6157949555621, 210.27662470796076  # its min and max, to scale r into [0, 1]
    c = (offset - w) + (np.abs(u) / 2.0 + 0.5) * w
    i = np.arange(1, 6)
    sums = (i * np.cos(c[..., None] * (i + 1) + i)).sum(-1)
    r = (sums[..., 0] * sums[..., 1] - lo) / (hi - lo)
    return np.log(r + 1e-3)


def _diag_sigmoid(u: np.ndarray) -> np.ndarray:
    """A soft half-plane: high above the anti-diagonal ``u_x + u_y = 0``."""
    r = 1.0 / (1.0 + np.exp(-5.0 * u.sum(-1)))
    return np.log(r + 1e-5)


LOG_REWARDS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "symmetric_shubert": _symmetric_shubert,
    "diag_sigmoid": _diag_sigmoid,
}


def log_reward(name: str, h: int, temperature: float = 1.0) -> np.ndarray:
    """``[H, H]`` float64 ``log R(x) = log r(u(x)) / temperature``."""
    if name not in LOG_REWARDS:
        raise ValueError(f"unknown reward {name!r}; known: {sorted(LOG_REWARDS)}")
    if not temperature > 0:
        raise ValueError(f"reward temperature {temperature!r}: need > 0")
    x, y = np.meshgrid(np.arange(h), np.arange(h), indexing="ij")
    u = np.stack([x, y], axis=-1) / (h - 1) * 2.0 - 1.0
    return LOG_REWARDS[name](u) / temperature


def normalize(log_r: np.ndarray) -> np.ndarray:
    """``R / Z`` by enumeration, from log-rewards."""
    p = np.exp(log_r - log_r.max())
    return p / p.sum()


def _from_parent(a: np.ndarray, axis: int) -> np.ndarray:
    """``out[x, y] = a[x - 1, y]`` (axis 0) or ``a[x, y - 1]`` (axis 1), 0 on the first row."""
    out = np.zeros_like(a)
    if axis == 0:
        out[1:] = a[:-1]
    else:
        out[:, 1:] = a[:, :-1]
    return out


def _from_child(a: np.ndarray, axis: int) -> np.ndarray:
    """``out[x, y] = a[x + 1, y]`` (axis 0) or ``a[x, y + 1]`` (axis 1), 0 on the last row."""
    out = np.zeros_like(a)
    if axis == 0:
        out[:-1] = a[1:]
    else:
        out[:, :-1] = a[:, 1:]
    return out


def check_policy(probs: np.ndarray) -> np.ndarray:
    """A float64 ``[H, H, 3]`` policy table whose rows sum to 1 and whose masked moves are 0."""
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 3 or probs.shape[0] != probs.shape[1] or probs.shape[2] != NUM_ACTIONS:
        raise ValueError(f"policy table of shape {probs.shape}: need [H, H, {NUM_ACTIONS}]")
    if np.any(probs[~action_mask(probs.shape[0])] != 0):
        raise ValueError("policy table moves off the grid")
    if not np.allclose(probs.sum(-1), 1.0, atol=1e-6):
        raise ValueError("policy table rows do not sum to 1")
    return probs


def visits(probs: np.ndarray) -> np.ndarray:
    """``[H, H]``: ``V(s)``, the probability that a trajectory of the policy passes ``s``."""
    probs = check_policy(probs)
    h = probs.shape[0]
    start = np.zeros((h, h))
    start[0, 0] = 1.0
    v = start
    for _ in range(num_steps(h)):
        v = (start + _from_parent(v * probs[..., MOVE_X], 0)
             + _from_parent(v * probs[..., MOVE_Y], 1))
    return v


def terminal_distribution(probs: np.ndarray) -> np.ndarray:
    """``[H, H]``: ``p(x) = V(x) P_F(stop | x)``, the policy's exact distribution of objects."""
    return visits(probs) * np.asarray(probs, np.float64)[..., STOP]


def expectation(probs: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``[H, H, K]``: ``E[g(x) | at s]`` under the policy, for terminal values ``g [H, H, K]``."""
    probs = check_policy(probs)
    g = np.asarray(g, np.float64)
    out = np.zeros_like(g)
    for _ in range(num_steps(probs.shape[0])):
        out = (probs[..., STOP, None] * g + probs[..., MOVE_X, None] * _from_child(out, 0)
               + probs[..., MOVE_Y, None] * _from_child(out, 1))
    return out


def flow_policy(log_r: np.ndarray) -> np.ndarray:
    """The exact policy for ``R`` with uniform ``P_B`` (module docstring); ``[H, H, 3]``."""
    h = log_r.shape[0]
    r = np.exp(log_r - log_r.max())  # a constant factor cancels in every ratio
    npar = np.maximum(num_parents(h), 1)
    f = r
    for _ in range(num_steps(h)):
        f = r + _from_child(f / npar, 0) + _from_child(f / npar, 1)
    probs = np.stack([_from_child(f / npar, 0), _from_child(f / npar, 1), r], axis=-1)
    return probs / f[..., None]
