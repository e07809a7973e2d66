"""Improper and empty compositions are reported, not sampled into answers that look fine."""

import os
import subprocess
import sys

import flax.struct
import jax
import numpy as np
import pytest

from compdiff import oracles, samplers, schedules
from compdiff.compose import Density
from compdiff.data import toy2d
from compdiff.evaluation import diagnostics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDULE = schedules.get("linear", 50)
HMC = samplers.get("hmc", steps_per_level=3, leapfrog=3, step=0.03, damping=0.5,
                   resample_ess=0.5)


def _data(name):
    return toy2d.get(name, SCHEDULE)


def _gauss(std):
    return oracles.gaussian_mixture([[0.0, 0.0]], std, SCHEDULE)


def test_a_negation_that_outgrows_its_positive_factor_is_improper():
    """``N(0, 0.5^2) / N(0, 0.1^2)^0.5``: log-density ~ +10.5 r^2 far out."""
    improper = _gauss(0.5) / _gauss(0.1) ** 0.5
    reason = diagnostics.improper_reason(improper, 1)
    assert reason and "improper" in reason and "64 of 64 rays" in reason
    assert diagnostics.improper_reason(_gauss(0.1) / _gauss(0.5) ** 0.5, 1) is None


@flax.struct.dataclass
class _ScoreOnly(Density):
    inner: Density
    dim: int = flax.struct.field(pytree_node=False, default=2)
    has_log_prob: bool = flax.struct.field(pytree_node=False, default=False)

    def score(self, x, t):
        return self.inner.score(x, t)


def test_score_only_compositions_are_checked_by_their_radial_score():
    reason = diagnostics.improper_reason(_ScoreOnly(_gauss(0.5) / _gauss(0.1) ** 0.5), 1)
    assert reason and "radial score > 0" in reason
    assert diagnostics.improper_reason(_ScoreOnly(_gauss(0.5)), 1) is None


@pytest.mark.parametrize("name, target, empty", [
    ("disjoint bars", lambda: _data("left_bar") * _data("right_bar"), True),
    ("ring * bar", lambda: _data("ring") * _data("bar"), False),
    ("small box but not big box", lambda: _data("small_box") / _data("big_box") ** 0.5, True),
    ("ring but not left half", lambda: _data("ring") / _data("left_half_ring") ** 0.5, False),
    ("mixture", lambda: _data("left_bar") + _data("right_bar"), False),
])
def test_mass_verdict(name, target, empty):
    verdict = diagnostics.mass_verdict(target(), HMC, SCHEDULE, jax.random.PRNGKey(0), 500)
    assert verdict.empty == empty, f"{name}: {verdict.line()}"


def test_mass_verdict_needs_importance_weights():
    with pytest.raises(ValueError, match="needs importance weights"):
        diagnostics.mass_verdict(_data("ring") * _data("bar"), samplers.get("ula"), SCHEDULE,
                                 jax.random.PRNGKey(0))


def _sample_py(*args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "sample.py"), *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    return result.returncode, result.stdout + result.stderr


def test_sample_py_prints_divergence_and_emptiness_verdicts(tmp_path):
    code, out = _sample_py("--model=l=oracle:left_bar", "--model=r=oracle:right_bar",
                           "--composition=l*r", "--sampler=hmc", "--steps_per_level=2",
                           "--step=0.03", "--levels=100", "--num=200",
                           f"--out={tmp_path / 'lr'}")
    assert code == 0, out
    assert "divergence: 0 of 200 chains" in out
    assert "emptiness: EMPTY: the positive factors share almost no mass" in out
    x = np.load(tmp_path / "lr.npz")["x"]
    assert x.shape == (200, 2)


def test_sample_py_refuses_an_improper_composition(tmp_path):
    code, out = _sample_py("--model=a=oracle:big_box", "--model=b=oracle:small_box",
                           "--composition=b/a^3", "--levels=20", "--num=10",
                           f"--out={tmp_path / 'x'}")
    assert code != 0 and "improper" in out and "Traceback" not in out
