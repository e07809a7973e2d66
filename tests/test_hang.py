"""The XLA CPU scheduler deadlock (compdiff/runtime.py): the case that hung runs to the end."""

import os
import subprocess
import sys

from compdiff import runtime

HUNG_CASE = """
import jax, numpy as np
from compdiff import oracles, samplers, schedules
schedule = schedules.get("linear", 10)
rng = np.random.default_rng(0)
a = rng.normal(size=(2, 128, 128)) / np.sqrt(128)
covs = np.einsum("kij,klj->kil", a, a) + 0.1 * np.eye(128)
target = oracles.gaussian_mixture(rng.normal(size=(2, 128)), covs, schedule)
x, _ = samplers.sample(target, samplers.get("ula", steps_per_level=1, step=1e-3), schedule,
                       jax.random.PRNGKey(0), 10)
print("finite", bool(np.isfinite(np.asarray(x)).all()))
"""


def test_ula_on_full_covariance_oracle_does_not_hang():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    # Without the guard this process never returns (every thread on a futex).
    done = subprocess.run([sys.executable, "-c", HUNG_CASE], env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finite True" in done.stdout


def test_guard_leaves_a_user_setting_alone(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{runtime.DEADLOCK_FLAG}=true")
    assert not runtime.avoid_cpu_scheduler_deadlock()
    assert os.environ["XLA_FLAGS"] == f"--{runtime.DEADLOCK_FLAG}=true"


def test_guard_is_set_by_importing_compdiff():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = "import os, compdiff; print(os.environ.get('XLA_FLAGS', ''))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120).stdout
    assert f"--{runtime.DEADLOCK_FLAG}=false" in out
