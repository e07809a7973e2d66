"""compdiff.runtime.configure_cpu: the entrypoints' opt-in CPU thread setting.

Each case runs in a fresh process, since XLA reads its settings when the
backend starts and this test process has usually started it already.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = """
import json, os, warnings
from compdiff import runtime
applied = runtime.configure_cpu()
# Importing compdiff adds the scheduler-deadlock guard (tests/test_hang.py checks it);
# these cases are about configure_cpu, so the guard is left out of what they compare.
guard = f"--{runtime.DEADLOCK_FLAG}=false"
xla_flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f != guard)
out = {"applied": applied, "xla_flags": xla_flags or None,
       "pjrt_nproc": os.environ.get("PJRT_NPROC")}
if os.environ.get("START_BACKEND"):
    import jax
    import jax.numpy as jnp
    out["devices"] = jax.device_count()
    out["sum"] = float(jax.jit(lambda x: (x @ x).sum())(jnp.ones((64, 64))))
    tasks = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else []
    out["eigen_threads"] = sum("XLAEigen" in open(f"/proc/self/task/{t}/comm").read()
                               for t in tasks) if tasks else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["again"] = [runtime.configure_cpu(), runtime.configure_cpu()]
    out["warnings"] = [str(w.message) for w in caught]
print(json.dumps(out))
"""
CLEARED = ("XLA_FLAGS", "PJRT_NPROC", "NPROC", "COMPDIFF_CPU_THREADS", "JAX_NUM_CPU_DEVICES")


def _run(opt_in: bool = True, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in CLEARED}
    base.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    if opt_in:
        base["COMPDIFF_CPU_THREADS"] = "1"
    base.update(env)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=base, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_off_by_default():
    out = _run(opt_in=False, START_BACKEND="1")
    assert out["applied"] == {} and out["xla_flags"] is None and out["pjrt_nproc"] is None
    assert out["again"] == [{}, {}] and out["warnings"] == []


def test_applied_on_cpu_and_the_backend_runs_with_it():
    out = _run(START_BACKEND="1")
    assert out["applied"] == {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
                              "PJRT_NPROC": "1"}
    assert out["xla_flags"] == "--xla_cpu_multi_thread_eigen=false"
    assert out["pjrt_nproc"] == "1"
    assert out["devices"] == 1 and out["sum"] == 64.0 * 64 * 64
    assert out["eigen_threads"] in (1, None)  # XLA's intra-op pool took the setting (Linux)
    # after the backend started: a no-op that warns once
    assert out["again"] == [{}, {}]
    assert len(out["warnings"]) == 1 and "after the JAX backend started" in out["warnings"][0]


def test_explicit_user_settings_win():
    out = _run(XLA_FLAGS="--xla_cpu_multi_thread_eigen=true --xla_cpu_enable_fast_math=false",
               PJRT_NPROC="3", START_BACKEND="1")
    assert out["applied"] == {}
    assert out["eigen_threads"] in (3, None)
    assert out["xla_flags"] == "--xla_cpu_multi_thread_eigen=true --xla_cpu_enable_fast_math=false"
    assert out["pjrt_nproc"] == "3"
    out = _run(XLA_FLAGS="--xla_cpu_enable_fast_math=false", NPROC="2")
    assert out["applied"] == {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    assert out["xla_flags"] == ("--xla_cpu_enable_fast_math=false "
                                "--xla_cpu_multi_thread_eigen=false")
    assert out["pjrt_nproc"] is None


def test_several_cpu_devices_keep_their_threads():
    """Each device's execution needs a pool thread (collectives rendezvous), so the
    pool size is left to XLA; the device count itself is never changed."""
    out = _run(XLA_FLAGS="--xla_force_host_platform_device_count=4", START_BACKEND="1")
    assert out["applied"] == {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    assert out["pjrt_nproc"] is None and out["devices"] == 4
    out = _run(JAX_NUM_CPU_DEVICES="2")
    assert "PJRT_NPROC" not in out["applied"]


@pytest.mark.parametrize("env", [{"COMPDIFF_CPU_THREADS": "default"},
                                 {"JAX_PLATFORMS": "cuda"}, {"JAX_PLATFORMS": "tpu,cpu"}])
def test_default_and_accelerators_leave_everything_alone(env):
    out = _run(**env)
    assert out == {"applied": {}, "xla_flags": None, "pjrt_nproc": None}


def test_a_bad_value_is_an_error():
    base = {k: v for k, v in os.environ.items() if k not in CLEARED}
    base.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, COMPDIFF_CPU_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=base, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "COMPDIFF_CPU_THREADS='2'" in proc.stderr
