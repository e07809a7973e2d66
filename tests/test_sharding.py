"""The sampler on 4 forced CPU devices gives the 1-device result for the same seed.

Runs in a subprocess because the device count is fixed when JAX starts.
Chains never interact except through resampling (a gather) and acceptance
means, and JAX's partitionable threefry draws the same random numbers
whether or not an array is sharded, so the results agree to float rounding
(the per-device matmuls may be tiled differently, hence allclose, not equal).
"""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, jax, numpy as np
    from compdiff import compose, samplers, schedules
    from compdiff.data import toy2d
    s = schedules.get("linear", 50)
    target = compose.negation(toy2d.get("ring", s), toy2d.get("left_half_ring", s))
    out = {"devices": jax.device_count()}
    for name in ["mala", "hmc"]:
        sampler = samplers.get(name, steps_per_level=2, step=0.01, resample_ess=0.5)
        key = jax.random.PRNGKey(3)
        x1, st1 = samplers.sample(target, sampler, s, key, 64, mesh=None)
        x4, st4 = samplers.sample(target, sampler, s, key, 64, mesh=samplers.chain_mesh())
        out[name] = {
            "sharded": str(x4.sharding),
            "max_dx": float(np.abs(np.asarray(x1) - np.asarray(x4)).max()),
            "max_daccept": float(np.abs(np.asarray(st1.accept) - np.asarray(st4.accept)).max()),
            "max_dlogw": float(np.abs(np.asarray(st1.log_weights)
                                      - np.asarray(st4.log_weights)).max()),
        }
    print("RESULT", json.dumps(out))
""")


def test_four_devices_match_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["devices"] == 4
    for name in ["mala", "hmc"]:
        r = result[name]
        assert "chains" in r["sharded"], r["sharded"]
        # Observed bit-identical on CPU; allow float-rounding slack only.
        assert r["max_dx"] < 1e-6 and r["max_daccept"] < 1e-6 and r["max_dlogw"] < 1e-5, r
