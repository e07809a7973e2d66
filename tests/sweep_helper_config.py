"""A config file with a sweep, for tests/test_sweep.py: its entrypoint is tests/sweep_helper.py.

Cheap on purpose (no JAX): the tests exercise scripts/sweep.py's running,
resuming and collating, not a model.
"""

import ml_collections

from compdiff import sweep

SWEEP_SCRIPT = "tests/sweep_helper.py"
SWEEP_METRICS = "metrics.json"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return ml_collections.ConfigDict(dict(x=1.0, y=1, sleep=0.0, fail_x=-1.0,
                                          opt=ml_collections.ConfigDict(dict(lr=0.1))))


def get_sweep(name: str) -> list[dict]:
    if name == "three":  # 3 points, ~1 s each: long enough to kill the sweep inside one
        return sweep.product(sweep.fixed_point({"sleep": 1.0}),
                             sweep.values("x", (1.0, 2.0, 3.0)))
    if name == "grid":  # 2 x 2, one point fails on its first run
        return sweep.product(sweep.values("x", (1.0, 2.0)), sweep.values("y", (1, 2)),
                             sweep.fixed_point({"fail_x": 2.0}))
    if name == "bad_key":
        return sweep.values("opt.lrr", (0.1, 0.2))
    if name == "bad_type":
        return sweep.values("y", (1, 2.5))
    raise ValueError(f"unknown sweep {name!r}; known: three, grid, bad_key, bad_type")
