"""Each Metropolis kernel keeps a fixed-level target invariant; a wrong one does not.

Chains start from exact samples of ``pi_t`` and take 100 kernel steps. For a
``pi_t``-invariant kernel the final states are again exact, independent
samples, so a two-sample test against fresh exact samples is valid. A step
size large enough that the Metropolis correction does real work makes the
test sensitive: the unadjusted ULA and a MALA whose proposal density has the
wrong variance both fail it.
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compdiff import samplers
from compdiff.compose import Density
from compdiff.samplers import kernels
from compdiff.testing import min_ks_pvalue

LEVEL, NUM, STEPS = 1, 4000, 100


def _mala_with_wrong_proposal_variance(target, state, key, p):
    """MALA whose log q uses variance eta instead of the proposal's 2 eta."""
    k_noise, k_accept = jax.random.split(key)
    eta = p.step_size
    x = state.x + eta * state.grad + jnp.sqrt(2 * eta) * jax.random.normal(k_noise, state.x.shape)
    log_prob, grad = kernels.evaluate(target, x, p.t)
    log_q_forward = -jnp.sum((x - state.x - eta * state.grad) ** 2, -1) / (2 * eta)
    log_q_backward = -jnp.sum((state.x - x - eta * grad) ** 2, -1) / (2 * eta)
    log_accept = log_prob - state.log_prob + log_q_backward - log_q_forward
    accepted, prob = kernels._accept(k_accept, log_accept, kernels._finite_rows(x, log_prob))
    return kernels._select(accepted, state.replace(x=x, log_prob=log_prob, grad=grad), state), prob


samplers.register("wrong_mala", _mala_with_wrong_proposal_variance, needs_log_prob=True)


@flax.struct.dataclass
class _Walled(Density):
    """``inner`` with log-density ``wall`` and score ``wall_score`` on the half-plane ``x > 0``."""

    inner: Density
    wall: float = flax.struct.field(pytree_node=False, default=-float("inf"))
    wall_score: float = flax.struct.field(pytree_node=False, default=float("nan"))
    dim: int = flax.struct.field(pytree_node=False, default=2)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)

    def log_prob_and_score(self, x, t):
        log_p, score = self.inner.log_prob_and_score(x, t)
        return (jnp.where(x[:, 0] > 0, self.wall, log_p),
                jnp.where(x[:, :1] > 0, self.wall_score, score))


def _chain_pvalue(target, sampler, schedule):
    exact = target.at_level(LEVEL)
    x0 = exact.sample(jax.random.PRNGKey(1), NUM)
    x, accept = samplers.run_chain(target, sampler, schedule, LEVEL, x0, jax.random.PRNGKey(2),
                                   STEPS)
    return min_ks_pvalue(x, exact.sample(jax.random.PRNGKey(3), NUM)), float(accept)


@pytest.mark.parametrize("sampler", [
    samplers.get("mala", step=0.01),
    samplers.get("mala", step=0.05),  # acceptance ~0.3: the correction is doing the work
    samplers.get("hmc", step=0.1, leapfrog=3, damping=0.9),
    samplers.get("hmc", step=0.3, leapfrog=3, damping=0.9),
    samplers.get("hmc", step=0.1, leapfrog=5, damping=0.0, mass=samplers.MassRule(2.0)),
], ids=lambda s: f"{s.name}-{s.step.a}-L{s.leapfrog}-g{s.damping}-M{s.mass.c}")
def test_metropolis_kernels_keep_the_target_invariant(sampler, skewed_gmm, schedule):
    pvalue, accept = _chain_pvalue(skewed_gmm, sampler, schedule)
    assert 0.1 < accept < 1.0
    assert pvalue > 1e-3, f"{sampler.name} drifted from its target (p={pvalue:.2g})"


@pytest.mark.parametrize("sampler", [
    samplers.get("wrong_mala", step=0.01),
    samplers.get("ula", step=0.05),
], ids=lambda s: s.name)
def test_wrong_or_unadjusted_kernels_fail_the_same_test(sampler, skewed_gmm, schedule):
    pvalue, _ = _chain_pvalue(skewed_gmm, sampler, schedule)
    assert pvalue < 1e-6, f"the test cannot tell {sampler.name} from a correct kernel"


@pytest.mark.parametrize("wall, wall_score", [(-float("inf"), float("nan")),
                                              (float("inf"), 0.0), (float("nan"), 0.0)])
def test_non_finite_proposals_are_rejected(schedule, skewed_gmm, wall, wall_score):
    """A target whose log-density is not finite on half the plane never lets chains in
    (a +inf log-density with a finite score would otherwise always be accepted)."""

    walled = _Walled(inner=skewed_gmm, wall=wall, wall_score=wall_score)
    x0 = jnp.full((512, 2), -0.05)
    for name in ("mala", "hmc"):
        x, accept = samplers.run_chain(walled, samplers.get(name, step=0.05), schedule, 1, x0,
                                       jax.random.PRNGKey(0), 50)
        assert bool(jnp.all(jnp.isfinite(x))) and bool(jnp.all(x[:, 0] <= 0))
        assert 0 < float(accept) < 1


def _gmm_moments(gmm):
    w = np.exp(np.asarray(gmm.log_weights, np.float64))
    means, covs = np.asarray(gmm.means, np.float64), np.asarray(gmm.covs, np.float64)
    mean = w @ means
    second = np.einsum("k,kij->ij", w, covs + np.einsum("ki,kj->kij", means, means))
    return mean, second


def test_hmc_reverses_the_momentum_on_rejection(skewed_gmm, schedule):
    """Persistent momentum at low acceptance: only the flip keeps the target invariant.

    Chains start exact; after 100 HMC steps with damping 0.95 and acceptance
    ~0.4, each first and second moment must match the exact level-1 mixture
    within 4.5 standard errors (max |z| 1.4 here). Keeping the momentum after
    a rejection drifts the chains along it (max |z| 7.6).
    """
    hmc = samplers.get("hmc", step=0.25, leapfrog=3, damping=0.95)
    exact = skewed_gmm.at_level(LEVEL)
    x0 = exact.sample(jax.random.PRNGKey(1), 20000)
    x, accept = samplers.run_chain(skewed_gmm, hmc, schedule, LEVEL, x0, jax.random.PRNGKey(2),
                                   100)
    assert 0.3 < float(accept) < 0.55
    x = np.asarray(x, np.float64)
    mean, second = _gmm_moments(exact)
    stats = [x[:, 0], x[:, 1], x[:, 0] ** 2, x[:, 1] ** 2, x[:, 0] * x[:, 1]]
    exact_values = [mean[0], mean[1], second[0, 0], second[1, 1], second[0, 1]]
    z = [(s.mean() - e) / (s.std() / np.sqrt(len(s))) for s, e in zip(stats, exact_values)]
    assert max(abs(v) for v in z) < 4.5, f"moment z-scores {np.round(z, 1)}"
