"""The maze environment, the chunk product, wells, respacing, and the trajectories experiment."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compdiff import chunks, compose, maze, schedules
from compdiff.experiments import common
from compdiff.models import DiffusionModel, ResidualMLP
from compdiff.models.diffusion import LinenApply
from configs.experiments import trajectories as trajectories_config

BOX_ONLY = maze.Maze(walls=maze.BOX)


# --- the environment --------------------------------------------------------------------------
def test_one_step_by_hand():
    s, f = np.array([0.0, 0.0, 0.5, -0.2]), np.array([2.0, 0.3])  # f_x clipped to 1
    # v' = (1 - 1 * 0.1) v + 0.1 f~ = (0.55, -0.15); p' = p + 0.1 v' = (0.055, -0.015)
    np.testing.assert_allclose(maze.step(BOX_ONLY, s, f), [0.055, -0.015, 0.55, -0.15],
                               atol=1e-12)


def test_a_step_into_a_wall_stops_at_rest():
    s = np.array([-0.01, -0.5, 0.5, 0.1])  # heading right into the U-maze's middle wall x = 0
    np.testing.assert_array_equal(maze.step(maze.U_MAZE, s, np.zeros(2)),
                                  [-0.01, -0.5, 0.0, 0.0])
    above = np.array([-0.01, 0.5, 0.5, 0.0])  # above the wall's top (y = 0.3): passes
    assert maze.step(maze.U_MAZE, above, np.zeros(2))[0] > 0


def test_rollouts_never_cross_walls_and_are_consistent():
    policy = maze.Policy(force_std=3.0, rho=0.95)  # hard pushes: many collisions
    x = maze.rollout(maze.U_MAZE, policy, 200, 40, seed=3)
    result = maze.check(maze.U_MAZE, x)
    assert result["crossings"].sum() == 0 and result["error"].max() == 0
    assert np.all(np.abs(x[..., :2]) < 1) and np.all(np.abs(x[..., 4:]) <= 1)
    stops = np.all(x[:, 1:, 2:4] == 0, -1).mean()
    assert stops > 0.05  # the walls were hit
    np.testing.assert_array_equal(x, maze.rollout(maze.U_MAZE, policy, 200, 40, seed=3))


def test_a_trajectory_through_a_wall_is_caught():
    x = maze.rollout(maze.U_MAZE, maze.Policy(), 1, 3, seed=0)[0]
    x[:, :2] = [[-0.2, -0.5], [0.2, -0.5], [0.2, -0.4]]  # jumps through x = 0 below its top
    result = maze.check(maze.U_MAZE, x, goal=np.array([0.2, -0.45]), radius=0.1)
    assert result["crossings"] == 1 and result["error"] > 0.1 and result["reached"]


def test_damping_shrinks_speed_and_collisions_never_add_it():
    rng = np.random.default_rng(0)
    s = np.concatenate([maze.free_positions(maze.U_MAZE, rng, 500),
                        rng.normal(size=(500, 2))], -1)
    for _ in range(30):
        nxt = maze.step(maze.U_MAZE, s, np.zeros((500, 2)))
        speed, new = np.linalg.norm(s[:, 2:], axis=-1), np.linalg.norm(nxt[:, 2:], axis=-1)
        moved = np.any(nxt[:, :2] != s[:, :2], -1)
        np.testing.assert_allclose(new[moved], 0.9 * speed[moved], rtol=1e-12)
        assert np.all(new[~moved] == 0)
        s = nxt


# --- the chunk product ------------------------------------------------------------------------
ROW, LENGTH, STRIDE, HORIZON = 3, 4, 2, 8


def _random_model(length: int, seed: int, num_levels: int = 10) -> DiffusionModel:
    net = ResidualMLP(dim=length * ROW, hidden=16, num_blocks=1, num_levels=num_levels)
    params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, length * ROW)),
                      jnp.zeros((1,), jnp.int32))["params"]
    return DiffusionModel(apply_fn=LinenApply(net), params=params,
                          schedule=schedules.get("linear", num_levels),
                          parameterization="energy_dae", dim=length * ROW)


def _explicit(model, starts, weights, length):
    def log_p(x, t):  # one trajectory [d]: the sum of weighted chunk log-densities by hand
        pieces = [w * model.log_prob(x[s * ROW:(s + length) * ROW][None], t)[0]
                  for s, w in zip(starts, weights)]
        return sum(pieces)
    return log_p


@pytest.mark.parametrize("t", [3, "per_sample"])
def test_chunk_product_is_the_sum_of_chunk_log_densities_on_their_slices(t):
    model = _random_model(LENGTH, seed=0)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, HORIZON * ROW))
    levels = jnp.arange(1, 6) if t == "per_sample" else jnp.full((5,), t)
    weights = np.array([1.0, 0.5, 2.0])
    product = chunks.chunk_product(model, HORIZON, LENGTH, STRIDE, ROW, weights)
    assert product.starts == (0, 2, 4)
    explicit = _explicit(model, product.starts, weights, LENGTH)
    want_lp = jnp.stack([explicit(xi, ti) for xi, ti in zip(x, levels)])
    want_score = jnp.stack([jax.grad(explicit)(xi, ti) for xi, ti in zip(x, levels)])
    arg = levels if t == "per_sample" else t
    log_p, score = product.log_prob_and_score(x, arg)
    np.testing.assert_allclose(log_p, want_lp, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(score, want_score, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(product.score(x, arg), want_score, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(product.log_prob(x, arg), want_lp, rtol=1e-5, atol=1e-4)


def test_junction_divides_by_the_overlaps():
    chunk, overlap = _random_model(LENGTH, 0), _random_model(LENGTH - STRIDE, 1)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, HORIZON * ROW))
    density = chunks.junction(chunk, overlap, HORIZON, LENGTH, STRIDE, ROW)
    plus = _explicit(chunk, (0, 2, 4), (1.0, 1.0, 1.0), LENGTH)
    minus = _explicit(overlap, (2, 4), (1.0, 1.0), LENGTH - STRIDE)
    want = jnp.stack([jax.grad(lambda y: plus(y, 2) - minus(y, 2))(xi) for xi in x])
    np.testing.assert_allclose(density.score(x, 2), want, rtol=1e-4, atol=1e-4)
    assert isinstance(density, compose.Product) and list(density.weights) == [1.0, -1.0]


def test_windows_must_tile_the_horizon():
    model = _random_model(LENGTH, 0)
    with pytest.raises(ValueError, match="multiple of the stride"):
        chunks.chunk_product(model, 9, LENGTH, STRIDE, ROW)
    with pytest.raises(ValueError, match="has dim"):
        chunks.chunk_product(model, HORIZON, LENGTH + 1, 1, ROW)
    with pytest.raises(ValueError, match="do not overlap"):
        chunks.junction(model, model, HORIZON, LENGTH, LENGTH, ROW)


def test_well_is_the_diffused_gaussian_and_respacing_keeps_levels():
    fine = schedules.get("linear", 12)
    target = np.array([[0.3, -0.2], [1.0, 0.5]])
    density = chunks.well(target, (1, 4), 0.1, fine, dim=6)
    x = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
    abar, sigma = float(fine.abar[5]), float(fine.sigma[5])
    var = abar * 0.01 + sigma ** 2
    want = (-0.5 * np.sum((x[:, [1, 4]] - np.sqrt(abar) * target) ** 2, -1) / var
            - np.log(2 * np.pi * var))
    np.testing.assert_allclose(density.log_prob(jnp.asarray(x), 5), want, rtol=1e-5)
    coarse, levels = chunks.respace(fine, 4)
    np.testing.assert_array_equal(levels, [0, 3, 6, 9, 12])
    np.testing.assert_allclose(coarse.abar, np.asarray(fine.abar)[levels], rtol=1e-5)
    spaced = chunks.respaced(density, levels)
    np.testing.assert_allclose(spaced.log_prob(jnp.asarray(x), 2),
                               density.log_prob(jnp.asarray(x), 6), rtol=1e-6)


# --- the experiment ---------------------------------------------------------------------------
def test_bad_configs_name_the_field(tmp_path):
    config = trajectories_config.get_config("tiny")
    config.kinds = ("monolithic", "chunk")
    with pytest.raises(ValueError, match="unknown model kinds"):
        common.run(config, str(tmp_path))
    config = trajectories_config.get_config("tiny")
    config.chunk.stride = 3
    with pytest.raises(ValueError, match="multiple of the stride"):
        common.run(config, str(tmp_path))
    with pytest.raises(ValueError, match="unknown trajectories variant"):
        trajectories_config.get_config("huge")


def test_tiny_end_to_end(tmp_path):
    config = trajectories_config.get_config("tiny")
    result = common.run(config, str(tmp_path))
    saved = json.loads((tmp_path / "trajectories.json").read_text())
    assert saved["variant"] == "tiny" and len(saved["rows"]) == 3 * len(config.stages)
    assert {r["kind"] for r in saved["rows"]} == {"monolithic", "chunks", "junction"}
    assert all(len(r["errors"]) == config.eval.num_starts for r in saved["rows"])
    labels = [r["sampler"] for r in saved["planning"]]
    assert labels == [s.label for s in config.planning.samplers]
    nfe = {r["sampler"]: r["nfe"] for r in saved["planning"]}
    assert nfe["reverse"] == nfe["mala"] == nfe["hmc"] == nfe["mala+adapt+smc"] - 1
    assert len(result["claims"]) == 4 and all(c["verdict"] in ("holds", "fails", "unresolved")
                                              for c in result["claims"])
    for name in ("error_vs_episodes_and_steps.png", "plans.png"):
        assert os.path.getsize(tmp_path / "figures" / name) > 0
    assert "| model | sampler |" in (tmp_path / "trajectories.md").read_text()
