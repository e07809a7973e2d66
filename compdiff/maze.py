"""A point mass in a small maze: Du & Kaelbling's Maze2D (Fig. 5, Fig. 7), reduced to numpy.

State ``s = (p, v)`` in ``R^4`` (position, velocity), force ``f`` in ``R^2``. One step of
length ``dt`` is semi-implicit Euler with linear damping ``gamma`` and a force limit
``f_max`` (per coordinate)::

    f~   = clip(f, -f_max, f_max)
    v'   = (1 - gamma dt) v + dt f~
    p'   = p + dt v'

Walls are axis-aligned segments: the outer box ``[-1, 1]^2`` and the interior walls of the
layout (:data:`U_MAZE`: one wall from the bottom edge up the middle, so the two bottom
corners are joined only over its top). Collisions stop the step: if the segment
``p -> p'`` touches a wall (endpoints included), the step is cancelled, ``p' = p`` and
``v' = 0`` (an inelastic stop at rest where the mass stood). So a simulated trajectory
never crosses a wall, and with ``f = 0`` its speed never grows: in free space it shrinks by
exactly ``1 - gamma dt`` per step, and a collision sets it to 0.

Episodes (:func:`rollout`): a start position uniform on the free space (at least
``margin`` from every wall), a start velocity ``N(0, start_speed^2 I)``, and a smooth random
force, an Ornstein-Uhlenbeck sequence ``f_0 ~ N(0, force_std^2 I)``,
``f_{k+1} = rho f_k + sqrt(1 - rho^2) force_std xi_k``. A trajectory is an ``[H, 6]`` array,
row ``k`` = ``(p_k, v_k, f~_k)`` with ``s_{k+1} = step(s_k, f~_k)``; the force stored is
the applied (clipped) one. Everything is a function of the seed.

Checks of a generated trajectory (:func:`check`): the dynamic-consistency error
``max_k |s_{k+1} - step(s_k, f_k)|_2`` (the clip and the walls are part of ``step``), the
number of steps whose segment ``p_k -> p_{k+1}`` crosses or touches a wall, and whether the
last position lies within ``radius`` of a goal.
"""

from __future__ import annotations

import dataclasses

import numpy as np

STATE, FORCE, ROW = 4, 2, 6


@dataclasses.dataclass(frozen=True)
class Maze:
    """Dynamics and layout. ``walls``: segments ``((x0, y0), (x1, y1))``, each axis-aligned."""

    walls: tuple[tuple[tuple[float, float], tuple[float, float]], ...]
    dt: float = 0.1
    damping: float = 1.0
    force_max: float = 1.0

    def __post_init__(self):
        for (x0, y0), (x1, y1) in self.walls:
            if x0 != x1 and y0 != y1:
                raise ValueError(f"wall {((x0, y0), (x1, y1))} is not axis-aligned")
        if not (self.dt > 0 and 0 <= self.damping * self.dt < 1 and self.force_max > 0):
            raise ValueError(f"need dt > 0, 0 <= damping dt < 1, force_max > 0; got dt="
                             f"{self.dt}, damping={self.damping}, force_max={self.force_max}")

    @property
    def segments(self) -> np.ndarray:
        """``[W, 2, 2]`` wall endpoints."""
        return np.asarray(self.walls, np.float64)


BOX = (((-1.0, -1.0), (1.0, -1.0)), ((1.0, -1.0), (1.0, 1.0)), ((1.0, 1.0), (-1.0, 1.0)),
       ((-1.0, 1.0), (-1.0, -1.0)))
U_MAZE = Maze(walls=BOX + (((0.0, -1.0), (0.0, 0.3)),))


def crosses(maze: Maze, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Whether each segment ``p[..., :] -> q[..., :]`` touches a wall ``[...]`` (bool).

    For an axis-aligned wall at ``x = c`` (``y`` in ``[lo, hi]``): the segment reaches
    ``x = c`` at ``u = (c - p_x) / (q_x - p_x)`` in ``[0, 1]`` with ``y`` there in
    ``[lo, hi]``; a segment lying on the wall's line touches it where the intervals overlap.
    """
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    hit = np.zeros(np.broadcast_shapes(p.shape, q.shape)[:-1], bool)
    for (a, b) in maze.segments:
        axis = 0 if a[0] == b[0] else 1  # the wall is the line coordinate[axis] = c
        other = 1 - axis
        c, lo, hi = a[axis], min(a[other], b[other]), max(a[other], b[other])
        d = q[..., axis] - p[..., axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = (c - p[..., axis]) / d
            y = p[..., other] + u * (q[..., other] - p[..., other])
        moving = (d != 0) & (u >= 0) & (u <= 1) & (y >= lo) & (y <= hi)
        on_line = ((d == 0) & (p[..., axis] == c)
                   & (np.maximum(p[..., other], q[..., other]) >= lo)
                   & (np.minimum(p[..., other], q[..., other]) <= hi))
        hit |= moving | on_line
    return hit


def step(maze: Maze, s: np.ndarray, f: np.ndarray) -> np.ndarray:
    """``s' = step(s, f)`` for states ``[..., 4]`` and forces ``[..., 2]`` (module docstring)."""
    s, f = np.asarray(s, np.float64), np.asarray(f, np.float64)
    p, v = s[..., :2], s[..., 2:]
    v_new = (1.0 - maze.damping * maze.dt) * v + maze.dt * np.clip(f, -maze.force_max,
                                                                      maze.force_max)
    p_new = p + maze.dt * v_new
    stopped = crosses(maze, p, p_new)[..., None]
    return np.concatenate([np.where(stopped, p, p_new), np.where(stopped, 0.0, v_new)], -1)


def free_positions(maze: Maze, rng: np.random.Generator, num: int, margin: float = 0.05
                   ) -> np.ndarray:
    """``num`` positions uniform on the box, at least ``margin`` from every wall (rejection)."""
    out = np.zeros((0, 2))
    while len(out) < num:
        p = rng.uniform(-1 + margin, 1 - margin, size=(2 * num, 2))
        out = np.concatenate([out, p[wall_distance(maze, p) >= margin]])
    return out[:num]


def wall_distance(maze: Maze, p: np.ndarray) -> np.ndarray:
    """Euclidean distance of each point ``[..., 2]`` to the nearest wall."""
    p = np.asarray(p, np.float64)
    best = np.full(p.shape[:-1], np.inf)
    for a, b in maze.segments:
        closest = np.clip(p, np.minimum(a, b), np.maximum(a, b))  # axis-aligned: a box clip
        best = np.minimum(best, np.linalg.norm(p - closest, axis=-1))
    return best


@dataclasses.dataclass(frozen=True)
class Policy:
    """The random force and start-state distribution of :func:`rollout`."""

    force_std: float = 1.0
    rho: float = 0.8
    start_speed: float = 0.3
    margin: float = 0.05

    def __post_init__(self):
        if not (self.force_std > 0 and 0 <= self.rho < 1 and self.start_speed >= 0
                and self.margin >= 0):
            raise ValueError(f"bad policy {self}: need force_std > 0, 0 <= rho < 1, "
                             "start_speed >= 0, margin >= 0")


def rollout(maze: Maze, policy: Policy, num: int, horizon: int, seed: int) -> np.ndarray:
    """``num`` episodes ``[num, horizon, 6]`` (rows ``(p, v, f~)``), a function of ``seed``."""
    if num < 1 or horizon < 2:
        raise ValueError(f"need num >= 1 and horizon >= 2, got num={num}, horizon={horizon}")
    rng = np.random.default_rng(seed)
    s = np.concatenate([free_positions(maze, rng, num, policy.margin),
                        policy.start_speed * rng.normal(size=(num, 2))], -1)
    f = policy.force_std * rng.normal(size=(num, 2))
    out = np.zeros((num, horizon, ROW))
    for k in range(horizon):
        applied = np.clip(f, -maze.force_max, maze.force_max)
        out[:, k] = np.concatenate([s, applied], -1)
        s = step(maze, s, applied)
        f = policy.rho * f + np.sqrt(1 - policy.rho ** 2) * policy.force_std * rng.normal(
            size=(num, 2))
    return out


def windows(trajectories: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    """Every ``length``-step window at offsets ``0, stride, ...`` of ``[N, H, 6]`` episodes:
    ``[N * num_windows, length, 6]``."""
    horizon = trajectories.shape[1]
    if not 1 <= length <= horizon or stride < 1:
        raise ValueError(f"need 1 <= length <= horizon ({horizon}) and stride >= 1, got "
                         f"length={length}, stride={stride}")
    starts = range(0, horizon - length + 1, stride)
    return np.concatenate([trajectories[:, s:s + length] for s in starts])


def consistency_error(maze: Maze, trajectories: np.ndarray) -> np.ndarray:
    """``max_k |s_{k+1} - step(s_k, f_k)|_2`` of each ``[..., H, 6]`` trajectory."""
    x = np.asarray(trajectories, np.float64)
    predicted = step(maze, x[..., :-1, :STATE], x[..., :-1, STATE:])
    return np.max(np.linalg.norm(x[..., 1:, :STATE] - predicted, axis=-1), axis=-1)


def wall_crossings(maze: Maze, trajectories: np.ndarray) -> np.ndarray:
    """How many steps ``p_k -> p_{k+1}`` of each trajectory cross or touch a wall."""
    x = np.asarray(trajectories, np.float64)
    return np.sum(crosses(maze, x[..., :-1, :2], x[..., 1:, :2]), axis=-1)


def check(maze: Maze, trajectories: np.ndarray, goal: np.ndarray | None = None,
          radius: float = 0.1) -> dict[str, np.ndarray]:
    """Per trajectory: ``error`` (:func:`consistency_error`), ``crossings``
    (:func:`wall_crossings`) and, given ``goal`` (``[2]`` or ``[..., 2]``), ``goal_distance``
    and ``reached`` (final position within ``radius``)."""
    x = np.asarray(trajectories, np.float64)
    out = {"error": consistency_error(maze, x), "crossings": wall_crossings(maze, x)}
    if goal is not None:
        out["goal_distance"] = np.linalg.norm(x[..., -1, :2] - np.asarray(goal), axis=-1)
        out["reached"] = out["goal_distance"] <= radius
    return out


# Model units: velocities times 3, so position, velocity and force all have a standard
# deviation of about 0.6-0.9 under the default policy (diffusion assumes unit-scale data).
MODEL_SCALE = np.array([1.0, 1.0, 3.0, 3.0, 1.0, 1.0])


def to_model(trajectories: np.ndarray) -> np.ndarray:
    """``[..., H, 6]`` trajectories as flat ``[..., 6 H]`` vectors in model units."""
    x = np.asarray(trajectories, np.float64) * MODEL_SCALE
    return x.reshape(*x.shape[:-2], -1).astype(np.float32)


def from_model(x: np.ndarray, horizon: int) -> np.ndarray:
    """Flat model-unit vectors ``[..., 6 H]`` back to ``[..., H, 6]`` trajectories."""
    x = np.asarray(x, np.float64)
    return x.reshape(*x.shape[:-1], horizon, ROW) / MODEL_SCALE


def draw(ax, maze: Maze) -> None:
    """The maze's walls on a matplotlib axis, square and unticked."""
    for (x0, y0), (x1, y1) in maze.walls:
        ax.plot([x0, x1], [y0, y1], "k-", lw=2)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
