"""GFlowNet sculpting on tiny grids: exact DP, exact composition, training that works."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from compdiff.experiments import common
from compdiff.experiments.gflownet import markdown
from compdiff.experiments.gflownet import run as gflownet_table
from compdiff.gflownet import classifier, composition, env, tb
from configs.experiments.gflownet import OPERATORS
from configs.experiments.gflownet import get_config as default_config


def _rewards(h):
    return [env.log_reward("symmetric_shubert", h, 0.5), env.log_reward("diag_sigmoid", h)]


def _random_policy(h, seed):
    logits = np.random.default_rng(seed).normal(size=(h, h, env.NUM_ACTIONS))
    p = np.exp(logits) * env.action_mask(h)
    return p / p.sum(-1, keepdims=True)


def test_dp_matches_monte_carlo_sampling():
    h, num = 4, 40_000
    policy = _random_policy(h, 0)
    exact = env.terminal_distribution(policy)
    log_probs = jnp.log(jnp.asarray(policy.reshape(h * h, -1), jnp.float32))
    traj = tb.sample_trajectories(jax.random.PRNGKey(0), log_probs, h, num)
    freq = np.bincount(np.asarray(traj["terminal"]), minlength=h * h).reshape(h, h) / num
    assert exact.sum() == pytest.approx(1.0, abs=1e-12)
    z = np.abs(freq - exact) / np.sqrt(exact * (1 - exact) / num)
    assert z.max() < 4.5, (z.max(), freq, exact)
    # Every trajectory stops once, after at most 2H - 2 moves, inside the grid.
    assert np.all(np.asarray(traj["valid"]).sum(1) >= 1)
    assert np.all(np.asarray(traj["actions"])[np.asarray(traj["valid"])] >= 0)


def test_flow_policy_samples_its_reward():
    for log_r in _rewards(6):
        policy = env.flow_policy(log_r)
        assert np.abs(env.terminal_distribution(policy) - env.normalize(log_r)).sum() < 1e-12
        ones = env.expectation(policy, np.ones((6, 6, 1)))
        assert np.allclose(ones, 1.0, atol=1e-12)


@pytest.fixture(scope="module")
def exact_setup():
    h = 6
    log_rs = _rewards(h)
    policies = [env.flow_policy(lr) for lr in log_rs]
    truth = [env.normalize(lr) for lr in log_rs]
    return policies, truth, composition.exact_classifier(policies, 3)


@pytest.mark.parametrize("operator", sorted(OPERATORS))
def test_exact_composition_matches_enumeration(exact_setup, operator):
    policies, truth, (nonterm, term) = exact_setup
    obs = OPERATORS[operator]
    goal = composition.target(truth, obs)
    composed = composition.composed_policy(policies, nonterm, term, obs)
    assert composition.l1(env.terminal_distribution(composed), goal) < 1e-5
    wrong = composition.composed_policy(policies, *composition.swap_labels(nonterm, term), obs)
    assert composition.l1(env.terminal_distribution(wrong), goal) > 0.05


def test_target_is_the_papers_formula():
    p1, p2 = np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.3, 0.6])
    hm = p1 * p2 / (p1 + p2)
    assert np.allclose(composition.target([p1, p2], (1, 2)), hm / hm.sum())
    contrast = p2 ** 2 / (p1 + p2)
    assert np.allclose(composition.target([p1, p2], (2, 2)), contrast / contrast.sum())
    assert np.allclose(composition.target([p1, p2], ()), (p1 + p2) / 2)


def test_trajectory_balance_training_reaches_its_target():
    h = 5
    log_r = _rewards(h)[0]
    truth = env.normalize(log_r)
    config = ml_collections.ConfigDict(dict(hidden=32, layers=2, steps=300, batch=128, lr=1e-2,
                                            lr_log_z=0.1, explore=0.05))
    policy, info = tb.train(log_r, config, seed=0, log_every=300)
    trained = composition.l1(env.terminal_distribution(policy), truth)
    net = tb.MLP(config.hidden, config.layers, env.NUM_ACTIONS)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2 * h)))
    untrained = composition.l1(
        env.terminal_distribution(tb.to_policy(tb.policy_log_probs(net, params, h), h)), truth)
    assert trained < 0.05 < untrained, (trained, untrained)
    assert info["log_z"] == pytest.approx(np.log(np.exp(log_r).sum()), abs=0.1)


def test_learned_classifier_guides_towards_the_harmonic_mean(exact_setup):
    policies, truth, _ = exact_setup
    config = ml_collections.ConfigDict(dict(hidden=32, layers=2, steps=300, batch=256, lr=1e-2,
                                            ema=0.9, ramp_steps=100))
    nonterm, term, _ = classifier.train(policies, 2, config, seed=0, log_every=300)
    goal = composition.target(truth, (1, 2))
    learned = composition.l1(env.terminal_distribution(
        composition.composed_policy(policies, nonterm, term, (1, 2))), goal)
    # A classifier that knows nothing (uniform tables) leaves the plain mixture.
    flat = composition.l1(env.terminal_distribution(composition.composed_policy(
        policies, np.zeros_like(nonterm), np.zeros_like(term), (1, 2))), goal)
    assert learned < flat / 4, (learned, flat)


def test_table_rows_and_errors(tmp_path):
    config = default_config("quick")
    config.size = 4
    config.gflownet.steps = config.classifier.steps = 20
    config.gflownet.hidden = config.classifier.hidden = 32
    config.classifier.ramp_steps = 10
    result = common.run(config, str(tmp_path))  # the protocol: JSON and Markdown files
    rows = result["rows"]
    assert json.loads((tmp_path / "gflownet.json").read_text())["rows"] == rows
    assert (tmp_path / "gflownet.md").read_text().startswith(markdown(result))
    assert {r["operator"] for r in rows} == set(OPERATORS) | {"base_1", "base_2"}
    assert all(set(r) == {"operator", "method", "l1"} for r in rows)
    exact = [r["l1"] for r in rows if r["method"] == "exact_base_exact_classifier"]
    assert len(exact) == len(OPERATORS) and max(exact) < 1e-6
    md = markdown(rows).splitlines()
    assert len(md) == 2 + len(OPERATORS) + 2 and md[0].startswith("| operator | trained |")
    with pytest.raises(ValueError, match="variant"):
        default_config("huge")
    config.operators.bad = (1, 3)
    with pytest.raises(ValueError, match="labels are 1..2"):
        gflownet_table(config)
    with pytest.raises(ValueError, match="unknown reward"):
        env.log_reward("nope", 4)
