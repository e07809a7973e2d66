"""What the tests and the measurement scripts share: two-sample checks against exact
samples, the ring x bar product with its closed-form target, a tiny training config, and a
tiny conditional network that counts its calls (to check that compositions batch)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.stats

from compdiff import oracles, schedules
from compdiff.models import conditioning
from compdiff.models.diffusion import DiffusionModel, LinenApply
from compdiff.models.mlp import ResidualMLP
from compdiff.schedules import Schedule


def min_ks_pvalue(x, y) -> float:
    """Smallest two-sample KS p-value over four 1D projections of 2D samples.

    The two coordinates, their sum and their difference catch shifts, scale
    errors and wrong correlations. Compare against a Bonferroni-style
    threshold; the samples must be independent draws for the p-value to hold.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    projections = np.array([[1, 0], [0, 1], [1, 1], [1, -1]], np.float64).T
    px, py = x @ projections, y @ projections
    return min(scipy.stats.ks_2samp(px[:, i], py[:, i]).pvalue for i in range(4))


def mode_weights_tv(x, mixture) -> float:
    """Total variation between nearest-mode frequencies of ``x`` and a Gaussian mixture's weights.

    Chains that freeze the mode weights of an intermediate level pass moment and
    KS checks far more easily than this one.
    """
    x, means = np.asarray(x), np.asarray(mixture.means)
    nearest = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), 1)
    freq = np.bincount(nearest, minlength=len(means)) / len(x)
    return float(0.5 * np.abs(freq - np.exp(np.asarray(mixture.log_weights, np.float64))).sum())


def ring_and_bar(schedule: Schedule, bar_y: float = 0.0
                 ) -> tuple[oracles.GaussianMixture, oracles.GaussianMixture,
                            oracles.GaussianMixture]:
    """``(ring, bar, exact level-1 product)``: RRR's 8-mode ring (std 0.05, radius 0.5)
    and a wide bar centred at ``(0, bar_y)``; ``bar_y != 0`` gives the product's two
    main modes unequal weights."""
    angles = np.arange(8) * np.pi / 4
    ring = oracles.gaussian_mixture(0.5 * np.stack([np.cos(angles), np.sin(angles)], -1), 0.05,
                                    schedule, name="ring")
    bar = oracles.gaussian_mixture([[0.0, bar_y]], [np.diag([0.25**2, 0.6**2])], schedule,
                                   name="bar")
    return ring, bar, oracles.gmm_product(ring.at_level(1), bar.at_level(1))


def small_train_config(param: str = "eps", steps: int = 40) -> ml_collections.ConfigDict:
    """``configs/models/toy2d.py`` on the ring, shrunk to train in seconds (tests only)."""
    from configs.models import toy2d  # the config package sits beside compdiff

    config = toy2d.get_config(f"dataset=ring,param={param}")
    config.model.hidden, config.model.num_blocks = 32, 2
    config.schedule.num_levels = 50
    config.train.update(steps=steps, batch_size=128, log_every=10, checkpoint_every=20)
    return config


@dataclasses.dataclass(frozen=True)
class CountingApply:
    """An ``ApplyFn`` that records the batch size of each call (eager: one per network
    evaluation; under jit or vmap: one per trace)."""

    inner: LinenApply
    calls: list = dataclasses.field(default_factory=list, hash=False, compare=False)

    def __call__(self, params, x, t, cond):
        self.calls.append(x.shape[0])
        return self.inner(params, x, t, cond)


def counting_conditional_model(dim: int, cond_dim: int, parameterization: str,
                               hidden: int = 16, num_blocks: int = 1,
                               schedule: Schedule | None = None,
                               name: str | None = None) -> DiffusionModel:
    """An untrained conditional residual MLP (10 levels) whose ``apply_fn`` is a
    :class:`CountingApply`: ``model.apply_fn.calls`` lists its network calls."""
    net = ResidualMLP(dim=dim, hidden=hidden, num_blocks=num_blocks, num_levels=10)
    params = net.init(jax.random.key(0), jnp.zeros((1, dim)), jnp.ones((1,), jnp.int32),
                      conditioning.given(jnp.zeros((1, cond_dim))))["params"]
    return DiffusionModel(apply_fn=CountingApply(LinenApply(net)), params=params,
                          schedule=schedule or schedules.get("linear", 10),
                          parameterization=parameterization, dim=dim, cond_dim=cond_dim,
                          **({"name": name} if name else {}))
