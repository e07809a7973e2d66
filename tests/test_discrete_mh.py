"""Discrete composition: the MH kernels leave the exact target invariant, the learned proposal
fits, and the experiment runs end to end at a tiny size."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compdiff import discrete
from compdiff.experiments import common
from configs.experiments import discrete_mh as dmh_config

L = 4


def _target(x):
    """A small non-product target: tilted bits, about two ones, no adjacent ones."""
    x = x.astype(jnp.float32)
    count = jnp.sum(x, -1)
    return (x @ jnp.linspace(-1.0, 1.0, x.shape[-1]) - (count - 2.0) ** 2
            - 1.5 * jnp.sum(x[:, 1:] * x[:, :-1], -1))


def _mismatched_proposal():
    """A proposal far from the target: every bit on with probability 0.8 (normalized)."""
    p = 0.8
    log_prob = lambda x: jnp.sum(jnp.where(x == 1, jnp.log(p), jnp.log(1 - p)), -1)  # noqa: E731
    sample = lambda key, num: jax.random.bernoulli(key, p, (num, L)).astype(jnp.int32)  # noqa: E731
    return sample, log_prob


def test_states_enumerate_and_index():
    states = discrete.all_states(L)
    assert states.shape == (16, L)
    np.testing.assert_array_equal(discrete.state_index(states), np.arange(16))
    with pytest.raises(ValueError, match="length"):
        discrete.all_states(0)


def test_independence_mh_transition_matrix_keeps_the_exact_target():
    states = discrete.all_states(L)
    log_t = _target(states)
    p = jax.nn.softmax(log_t)
    _, log_q = _mismatched_proposal()
    matrix = discrete.independence_mh_transition_matrix(log_t, log_q(states))
    np.testing.assert_allclose(np.sum(matrix, 1), 1.0, atol=1e-6)
    assert np.all(np.asarray(matrix) >= -1e-7)
    np.testing.assert_allclose(p @ matrix, p, atol=1e-6)
    # Dropping the proposal terms (the paper's ratio with an inexact proposal) breaks it.
    wrong = discrete.independence_mh_transition_matrix(log_t - log_q(states), log_q(states))
    stationary = np.asarray(p) @ np.linalg.matrix_power(np.asarray(wrong, np.float64), 1000)
    assert 0.5 * np.sum(np.abs(stationary - np.asarray(p))) > 0.1


def _chain_tv(kernel, log_prop=None, steps=60, chains=20000):
    states = discrete.all_states(L)
    p = discrete.exact_distribution(_target, L)
    x0 = jax.random.bernoulli(jax.random.PRNGKey(1), 0.5, (chains, L)).astype(jnp.int32)
    state = discrete.init_state(_target, x0, log_prop)
    indices, accept = jax.jit(lambda s, k: discrete.run_chains(kernel, s, k, 1, steps))(
        state, jax.random.PRNGKey(2))
    tv = float(discrete.total_variation(discrete.state_counts(indices, len(states)), p)[0])
    return tv, float(accept[0])


def _iid_tv(chains=20000, seed=3):
    p = np.asarray(discrete.exact_distribution(_target, L), np.float64)
    counts = np.random.default_rng(seed).multinomial(chains, p / p.sum())
    return float(discrete.total_variation(counts[None], p)[0])


@pytest.mark.parametrize("name", ["independence_mh", "gibbs", "local_flip"])
def test_chains_reach_the_exact_target(name):
    """The real kernels, run on many chains, end at the enumerated target (within a few times
    the TV of as many exact samples); with a mismatched proposal a wrong acceptance cannot."""
    sample, log_q = _mismatched_proposal()
    if name == "independence_mh":
        tv, accept = _chain_tv(discrete.independence_mh_kernel(_target, sample, log_q), log_q)
    elif name == "gibbs":
        tv, accept = _chain_tv(discrete.gibbs_kernel(_target))
    else:
        tv, accept = _chain_tv(discrete.local_flip_kernel(_target))
    assert 0 < accept < 1
    assert tv < 3 * _iid_tv() + 0.01, tv


def test_paper_acceptance_with_an_inexact_proposal_misses_the_target():
    """MH toward ``log q - E_2`` (the paper's ratio) samples that, not the composition."""
    sample, log_q = _mismatched_proposal()
    paper = lambda x: log_q(x) + _target(x)  # noqa: E731  (q is not the first factor here)
    kernel = discrete.independence_mh_kernel(paper, sample, log_q)
    tv, _ = _chain_tv(kernel, log_q)
    assert tv > 5 * _iid_tv()


def test_autoregressive_fit_is_normalized_and_matches_its_samples():
    states = discrete.all_states(L)
    log_p = jax.nn.log_softmax(_target(states))
    data = states[jax.random.categorical(jax.random.PRNGKey(0), log_p, shape=(4000,))]
    model, losses = discrete.fit_autoregressive(jax.random.PRNGKey(1), data, hidden=16,
                                                steps=600, lr=1e-2)
    log_q = model.log_prob(states)
    assert float(jax.nn.logsumexp(log_q)) == pytest.approx(0.0, abs=1e-5)  # normalized
    kl = float(jnp.sum(jnp.exp(log_p) * (log_p - log_q)))
    assert kl < 0.03, kl  # fits the target it saw (the untrained start is far off)
    assert float(losses[-50:].mean()) < float(losses[:10].mean())
    counts = discrete.state_counts(
        discrete.state_index(model.sample(jax.random.PRNGKey(2), 20000))[None], 16)
    assert float(discrete.total_variation(counts, jnp.exp(log_q))[0]) < 0.03
    with pytest.raises(ValueError, match="binary strings"):
        discrete.fit_autoregressive(jax.random.PRNGKey(0), jnp.zeros((4,)))


def test_config_variants_and_bad_input():
    for name in dmh_config.VARIANTS:
        assert dmh_config.get_config(name).experiment == "discrete_mh"
    with pytest.raises(ValueError, match="unknown discrete_mh variant"):
        dmh_config.get_config("huge")
    config = dmh_config.get_config("tiny")
    config.methods = ("mh_learned", "bogus")
    with pytest.raises(ValueError, match="unknown methods"):
        from compdiff.experiments import discrete_mh
        discrete_mh.run(config, "/nonexistent")


def test_tiny_end_to_end(tmp_path):
    config = dmh_config.get_config("tiny")
    result = common.run(config, str(tmp_path))
    methods = {r["method"] for r in result["rows"]}
    assert methods == set(config.methods)
    for r in result["rows"]:
        assert len(r["final_tv"]) == config.num_seeds and all(0 <= v <= 1 for v in r["final_tv"])
    assert len(result["claims"]) == 3 and all(c["verdict"] in ("holds", "fails", "unresolved")
                                              for c in result["claims"])
    assert os.path.exists(tmp_path / "figures" / "tv_curves.png")
    with open(tmp_path / "discrete_mh.json") as f:
        assert json.load(f)["experiment"] == "discrete_mh"
    assert "evaluations to TV" in (tmp_path / "discrete_mh.md").read_text()
