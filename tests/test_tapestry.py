"""Tapestries: the canvas density is the product of its crops' densities, sampled exactly."""

from __future__ import annotations

import functools
import importlib.util
import json
import pathlib
import subprocess
import sys

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from compdiff import checkpoints, samplers, schedules
from compdiff.compose import Density
from compdiff.data import captioned_scenes
from compdiff.models.diffusion import DiffusionModel, classifier_free_product
from compdiff.tapestry import Crop, Tapestry, grid_crops, overlaps, tapestry
from compdiff.testing import counting_conditional_model
from compdiff.training import tasks
from compdiff.training.state import init_state
from configs.models import tapestry as tapestry_configs

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEDULE = schedules.get("linear", 10)
FEW_LEVELS = schedules.get("linear", 3)  # the test Gaussians are the same at every level


@flax.struct.dataclass
class Gaussian(Density):
    """``N(mean, precision^-1)`` at every level: ``log p = -(x - m)^T P (x - m) / 2``
    (unnormalized), ``score = -P (x - m)``. Plain matmuls, so sampling tests run in seconds."""

    mean: jnp.ndarray
    precision: jnp.ndarray
    dim: int = flax.struct.field(pytree_node=False, default=0)
    name: str = flax.struct.field(pytree_node=False, default="gauss")
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=True)

    def log_prob(self, x, t):
        d = x - self.mean
        return -0.5 * jnp.sum((d @ self.precision) * d, -1)

    def score(self, x, t):
        return -(x - self.mean) @ self.precision

    def describe(self) -> str:
        return self.name


def _gaussian(mean, cov, name: str = "gauss") -> Gaussian:
    mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
    return Gaussian(mean=jnp.asarray(mean, jnp.float32),
                    precision=jnp.asarray(np.linalg.inv(cov), jnp.float32), dim=len(mean),
                    name=name)


def _random_gaussian(dim: int, seed: int, name: str) -> Gaussian:
    """A full-covariance Gaussian over ``R^dim`` with a random mean and covariance."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return _gaussian(rng.normal(size=dim), 0.1 * a @ a.T + 0.05 * np.eye(dim), name)


def _reference_score(tap: Tapestry, x: np.ndarray, t: int) -> np.ndarray:
    """``sum_i w_i P_i^T score_i`` pixel by pixel (a second implementation of the scatter)."""
    height, width, channels = tap.canvas_shape
    h, w = tap.crop_shape
    canvas = np.asarray(x).reshape(len(x), height, width, channels)
    out = np.zeros_like(canvas)
    for crop in tap.crops:
        window = canvas[:, crop.top:crop.top + h, crop.left:crop.left + w].reshape(len(x), -1)
        s = np.asarray(crop.density.score(jnp.asarray(window), t)).reshape(len(x), h, w, channels)
        for r in range(h):
            for c in range(w):
                out[:, crop.top + r, crop.left + c] += float(crop.weight) * s[:, r, c]
    return out.reshape(len(x), -1)


# --- (a) the product over crops: log-density, score, overlaps ---------------------------------
def test_log_prob_is_the_weighted_sum_and_score_its_gradient():
    canvas, crop_hw = (3, 4, 2), (2, 3)
    positions, weights = [(0, 0), (1, 1), (0, 1), (1, 0)], [1.0, 0.5, 2.0, 0.75]
    crops = [Crop(top, left, _random_gaussian(12, i, f"g{i}"), weight)
             for i, ((top, left), weight) in enumerate(zip(positions, weights))]
    tap = tapestry(canvas, crop_hw, crops)
    assert tap.dim == 24 and tap.has_log_prob
    assert [b.indices for b in tap.batches] == [(0, 1, 2, 3)]  # one layout: one vmapped call
    x = jax.random.normal(jax.random.key(0), (5, 24))
    t = 3
    windows = tap.crop_pixels(x)
    want = sum(w * c.density.log_prob(win, t) for w, c, win in zip(weights, crops, windows))
    np.testing.assert_allclose(tap.log_prob(x, t), want, rtol=1e-5, atol=1e-5)
    grad = jax.grad(lambda y: jnp.sum(tap.log_prob(y, t)))(x)
    np.testing.assert_allclose(tap.score(x, t), grad, rtol=1e-4, atol=1e-4)
    log_p, score = jax.jit(lambda d, y: d.log_prob_and_score(y, t))(tap, x)
    np.testing.assert_allclose(log_p, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(score, grad, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(score, _reference_score(tap, x, t), rtol=1e-4, atol=1e-4)
    # Pixel (row 1, column 1) lies in all four crops, (0, 0) in crop 0 alone: each term adds
    # at its window's position (row 1 col 1 is crop 0's (1, 1), crop 1's (0, 0), crop 2's
    # (1, 0), crop 3's (0, 1)), with the crop's weight.
    s = [np.asarray(c.density.score(win, t)).reshape(5, 2, 3, 2)
         for c, win in zip(crops, windows)]
    score_px = np.asarray(score).reshape(5, 3, 4, 2)
    np.testing.assert_allclose(score_px[:, 1, 1], 1.0 * s[0][:, 1, 1] + 0.5 * s[1][:, 0, 0]
                               + 2.0 * s[2][:, 1, 0] + 0.75 * s[3][:, 0, 1], rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(score_px[:, 0, 0], s[0][:, 0, 0], rtol=1e-5, atol=1e-5)
    assert np.abs(score_px[:, 1, 1] - s[0][:, 1, 1]).max() > 0.1  # the other terms matter


# --- (b) an exact Gaussian target, sampled ------------------------------------------------------
# A 1x3x1 canvas, crops of width 2 at columns 0 and 1 (weights 1 and 1.5) that disagree about
# the shared middle pixel: crop 0 wants it near 0.8, crop 1 near -0.7.
ROW_CROPS = [((0.6, 0.8), [[0.3, 0.1], [0.1, 0.2]], 1.0),
             ((-0.7, -0.4), [[0.25, -0.05], [-0.05, 0.3]], 1.5)]


def _row_tapestry() -> tuple[Tapestry, np.ndarray, np.ndarray]:
    """The tapestry and its exact precision ``Lambda`` and mean ``mu``:
    ``Lambda = sum_i w_i P_i^T C_i^-1 P_i``, ``mu = Lambda^-1 sum_i w_i P_i^T C_i^-1 m_i``."""
    crops, precision, shift = [], np.zeros((3, 3)), np.zeros(3)
    for left, (mean, cov, weight) in enumerate(ROW_CROPS):
        crops.append(Crop(0, left, _gaussian(mean, cov, f"c{left}"), weight))
        p = np.zeros((2, 3))
        p[:, left:left + 2] = np.eye(2)
        inv = np.linalg.inv(np.asarray(cov, np.float64))
        precision += weight * p.T @ inv @ p
        shift += weight * p.T @ inv @ np.asarray(mean, np.float64)
    return tapestry((1, 3, 1), (1, 2), crops), precision, np.linalg.solve(precision, shift)


def _moments_within(x: np.ndarray, mean: np.ndarray, cov: np.ndarray, sigmas: float = 5.0):
    """Sample mean and covariance within ``sigmas`` standard errors of the exact ones."""
    n = len(x)
    mean_se = np.sqrt(np.diag(cov) / n)
    cov_se = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n)
    mean_err = np.abs(x.mean(0) - mean) / mean_se
    cov_err = np.abs(np.cov(x.T) - cov) / cov_se
    assert mean_err.max() < sigmas and cov_err.max() < sigmas, (x.mean(0), mean, np.cov(x.T),
                                                               cov)


def test_ula_samples_the_exact_product_of_crops():
    """ULA moves by the score alone, so a wrong scatter (a crop overwriting another's term on
    the overlap instead of adding to it) moves its samples off the exact target. At step
    ``eta`` on a Gaussian of precision ``Lambda`` ULA's stationary law is exactly
    ``N(mu, (Lambda - eta Lambda^2 / 2)^-1)``, so nothing but Monte Carlo error is tolerated."""
    tap, precision, mean = _row_tapestry()
    eta = 0.04
    ula = samplers.get("ula", steps_per_level=40, step=samplers.StepRule(eta))
    x, stats = samplers.sample(tap, ula, FEW_LEVELS, jax.random.key(1), 4000, denoise=False,
                               mesh=None)
    assert stats.diverged == 0
    _moments_within(np.asarray(x, np.float64), mean,
                    np.linalg.inv(precision - eta * precision @ precision / 2))


def test_mala_samples_the_exact_product_of_crops():
    """MALA's Metropolis test uses the log-density (any drift leaves its target exact), so
    this checks the tapestry's ``log_prob`` and the sampler plumbing, not the scatter."""
    tap, precision, mean = _row_tapestry()
    mala = samplers.get("mala", steps_per_level=40, step=samplers.StepRule(0.05))
    x, stats = samplers.sample(tap, mala, FEW_LEVELS, jax.random.key(2), 4000, denoise=False,
                               mesh=None)
    assert stats.accept_low_noise() > 0.5
    _moments_within(np.asarray(x, np.float64), mean, np.linalg.inv(precision))


# --- (c) one vmapped call for crops of one layout equals the loop --------------------------------
COND_DIM = 3


def _conditional_model(dim: int, parameterization: str) -> DiffusionModel:
    return counting_conditional_model(dim, COND_DIM, parameterization, schedule=SCHEDULE,
                                      name="net")


@pytest.mark.parametrize("parameterization", ["energy_dae", "eps"])
def test_batched_crops_equal_the_loop_in_one_network_call(parameterization):
    model = _conditional_model(6, parameterization)
    rng = np.random.default_rng(0)
    positions = grid_crops((2, 5), (2, 3), 1)
    assert positions == [(0, 0), (0, 1), (0, 2)]
    crops = [Crop(top, left, classifier_free_product(model, [rng.normal(size=COND_DIM)], 2.0),
                  1.0 + 0.25 * i) for i, (top, left) in enumerate(positions)]
    # A fourth crop of another layout is evaluated on its own.
    crops.append(Crop(0, 1, _random_gaussian(6, 7, "other"), 0.5))
    batched = tapestry((2, 5, 1), (2, 3), crops)
    looped = tapestry((2, 5, 1), (2, 3), crops, batch=False)
    assert [b.indices for b in batched.batches] == [(0, 1, 2)] and looped.batches == ()
    shared = batched.batches[0].shared
    assert any(shared) and not all(shared)  # the network's parameters once, conditions stacked
    x = jax.random.normal(jax.random.key(3), (4, 10))
    what = "log_prob_and_score" if model.has_log_prob else "score"
    # Under jit the network is called once per trace: the calls of one evaluation.
    evaluate = jax.jit(lambda density, y, t: getattr(density, what)(y, t))
    for t in (jnp.asarray(4), jnp.arange(1, 5)):
        model.apply_fn.calls.clear()
        got = evaluate(batched, x, t)
        assert model.apply_fn.calls == [2 * 4], model.apply_fn.calls  # K crops in one call
        model.apply_fn.calls.clear()
        want = evaluate(looped, x, t)
        assert model.apply_fn.calls == [2 * 4] * 3
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    if not model.has_log_prob:
        assert not batched.has_log_prob
        with pytest.raises(ValueError, match="score-only"):
            batched.log_prob(x, 2)
        with pytest.raises(ValueError, match="'mala'.*score-only"):
            samplers.sample(batched, samplers.get("mala"), SCHEDULE, jax.random.key(0), 2)


# --- (d) validation -------------------------------------------------------------------------
def test_validation_errors_are_one_clear_line():
    g6 = _random_gaussian(6, 0, "g6")
    ok = [Crop(0, 0, g6), Crop(0, 2, g6)]
    tapestry((2, 5, 1), (2, 3), ok)  # covers columns 0..4
    cases = [
        (((2, 5, 1), (2, 3), []), "at least one crop"),
        (((2, 5, 1), (2, 3), [Crop(0, 0, g6), Crop(0, 3, g6)]),
         r"crop 1 at \(top=0, left=3\) covers rows 0..1, columns 3..5, outside the 2x5 canvas"),
        (((2, 5, 1), (2, 3), [Crop(-1, 0, g6), Crop(0, 2, g6)]), "crop 0 .* outside"),
        (((2, 5, 1), (2, 3), [Crop(0, 0, g6), Crop(0, 2, _random_gaussian(4, 1, "g4"))]),
         r"crop 1: its density g4 has dim 4, but a 2x3x1 crop has 6 pixels"),
        (((2, 6, 1), (2, 3), [Crop(0, 0, g6), Crop(0, 2, g6)]),
         r"no crop would have no density: 2 in rows 0..1, columns 5..5 of the 2x6 canvas"),
        (((2, 5, 1), (2, 3), [Crop(0, 0, g6, 0.0), Crop(0, 2, g6)]),
         "crop 0: weight must be a positive finite number"),
        (((2, 5, 1), (2, 3), [Crop(0, 0, g6), Crop(0, 2, g6, float("nan"))]),
         "crop 1: weight must be a positive finite number"),
        (((2, 5, 1), (2, 3), [Crop(0, 0.5, g6), Crop(0, 2, g6)]), "left must be an integer"),
        (((2, 5), (2, 3), ok), r"canvas_shape \(H, W, C\) must be 3 positive integers"),
        (((2, 5, 1), (3, 3), ok), "crop_shape 3x3 is larger than the 2x5 canvas"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            tapestry(*args)
    with pytest.raises(TypeError, match="crop 0 must be a Crop"):
        tapestry((2, 5, 1), (2, 3), [g6])
    assert grid_crops((16, 32, 3), (16, 16), 8) == [(0, 0), (0, 8), (0, 16)]
    assert grid_crops((5, 5), (3, 3), (2, 3)) == [(0, 0), (0, 2), (2, 0), (2, 2)]
    # the shared band of each overlapping pair; crops 0 and 2 of the first grid only touch
    assert overlaps([(0, 0), (0, 8), (0, 16)], (16, 16)) == [(0, 1, 0, 8, 16, 8),
                                                            (1, 2, 0, 16, 16, 8)]
    assert overlaps([(0, 0), (0, 2), (2, 0), (2, 2)], (3, 3)) == [
        (0, 1, 0, 2, 3, 1), (0, 2, 2, 0, 1, 3), (0, 3, 2, 2, 1, 1), (1, 2, 2, 2, 1, 1),
        (1, 3, 2, 2, 1, 3), (2, 3, 2, 2, 3, 1)]
    with pytest.raises(ValueError, match="stride 4 along columns is larger than the crop"):
        grid_crops((3, 10), (3, 3), (1, 4))
    with pytest.raises(ValueError, match="does not fit"):
        grid_crops((3, 10), (4, 3), 1)
    with pytest.raises(ValueError, match="stride must be 2 positive integers"):
        grid_crops((3, 10), (3, 3), 0)


# --- (e) scripts/tapestry.py end to end -----------------------------------------------------
TEXT_DIM = 384  # all-MiniLM-L6-v2's, so the real encoder fits the tiny model too


def _save_tiny_text_model(workdir: pathlib.Path, parameterization: str) -> None:
    """An untrained 8x8 text-conditioned UNet saved as ``train.train`` saves a run (its
    resolved config.json and an orbax checkpoint), so ``load_model`` reads it."""
    config = ml_collections.ConfigDict({
        "task": "diffusion",
        "data": {"source": "captioned_scenes", "builder_config": "tiny",
                 "example": "image_caption"},
        "model": {"network": "unet", "parameterization": parameterization,
                  "cond_dim": TEXT_DIM, "dim": 8 * 8 * 3, "image_shape": [8, 8, 3],
                  "channels": 8, "channel_mult": [1], "num_res_blocks": 1,
                  "attention_resolutions": [], "num_heads": 1, "remat": False,
                  "position_map": 0.0},
        "schedule": {"name": "linear", "num_levels": 3},
        "train": {"lr": 1e-3, "grad_clip": 1.0},
    })
    state = init_state(config, tasks.make_network(config), jax.random.key(0))
    manager = checkpoints.open_manager(str(workdir))
    manager.save(0, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    manager.close()
    (workdir / "config.json").write_text(config.to_json(indent=2))


def _fake_encode(texts: list[str]) -> np.ndarray:
    """A deterministic unit vector per text (hash-seeded), counting the encoder's calls."""
    _fake_encode.calls.append(list(texts))
    rows = [np.random.default_rng(list(text.encode())).normal(size=TEXT_DIM) for text in texts]
    return np.stack([r / np.linalg.norm(r) for r in rows]).astype(np.float32)


_fake_encode.calls = []


@functools.cache  # loaded once: the script defines absl flags
def _script():
    spec = importlib.util.spec_from_file_location("tapestry_script",
                                                  ROOT / "scripts" / "tapestry.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_prompts_are_captions_of_the_vocabulary():
    config = tapestry_configs.get_config("demo")
    for prompt in config.prompts:
        captioned_scenes.caption_index(prompt)  # raises for a caption outside the vocabulary
    assert len(config.prompts) == len(config.scales) == 3  # a 1x2 canvas at stride 0.5
    with pytest.raises(ValueError, match="bad config variant"):
        tapestry_configs.get_config("huge")


def test_script_samples_a_tapestry_end_to_end(tmp_path):
    model_dir = tmp_path / "model"
    _save_tiny_text_model(model_dir, "eps")
    config = tapestry_configs.get_config("tiny")
    _fake_encode.calls.clear()
    record = _script().run(config, str(model_dir), str(tmp_path / "out"), encode=_fake_encode)
    assert _fake_encode.calls == [list(config.prompts)]  # every phrase encoded once
    assert record["canvas_shape"] == [8, 16, 3] and record["crop_shape"] == [8, 8]
    assert record["crops"] == [[0, 0], [0, 4], [0, 8]]
    # Three prompts of one template: one vmapped network call per canvas evaluation.
    assert record["crop_batches"] == [[0, 1, 2]] and record["network_calls_per_evaluation"] == 1
    assert record["sampler"] == "ula" and record["nfe"] == 3 * 2  # 3 levels x (1 + 1 step)
    # An untrained network: its chains may escape, but the canvases it returns are numbers.
    assert record["finite"] and 0 <= record["diverged"] <= 2
    # two bands (crops 0-1, 1-2) per canvas, and three crop windows, judged for noise
    assert record["overlap_noise"].endswith("/4") and record["crop_noise"].endswith("/6")
    saved = np.load(record["npz"])
    assert saved["x"].shape == (2, 8 * 16 * 3) and saved["images"].shape == (2, 8, 16, 3)
    assert list(saved["prompts"]) == list(config.prompts)
    assert pathlib.Path(record["png"]).stat().st_size > 0
    json.dumps(record)  # the line main() prints
    # A score-only (eps) model cannot be sampled with a Metropolis-adjusted sampler.
    with pytest.raises(ValueError, match="'mala'.*score-only"):
        _script().run(config, str(model_dir), str(tmp_path / "mala"), encode=_fake_encode,
                      sampler_name="mala")
    with config.unlocked():
        config.prompts = config.prompts[:2]
    with pytest.raises(ValueError, match="lays out 3 crops .* but gives 2 prompts"):
        _script().run(config, str(model_dir), str(tmp_path / "bad"), encode=_fake_encode)


def test_cli_reports_a_missing_model_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/tapestry.py", "--config=configs/models/tapestry.py:tiny",
         f"--model={tmp_path / 'missing'}", f"--out={tmp_path / 'out'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("tapestry.py: error: no training run at"), lines[0]
