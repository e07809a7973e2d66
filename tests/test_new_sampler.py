"""A new sampler is two files: its kernel module (``tests/toy_kernel.py``) and a config row.

The toy kernel, registered by name, runs in a table (the 2D table on one oracle product)
and in ``scripts/sample.py`` with nothing else changed: the rows, labels, NFE and the
"needs a log-density" check all come from the registry.
"""

import os
import subprocess
import sys

import numpy as np
import toy_kernel  # noqa: F401  (registers "toy")

from compdiff.experiments import common
from configs.common import sampler_row
from configs.experiments import table2d as table_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_registered_kernel_runs_in_a_table(tmp_path):
    config = table_config.get_config("quick")
    config.schedule.num_levels = 10
    config.models = ("oracle",)
    config.composition_names = ("product",)
    config.samplers.toy = sampler_row("toy", steps_per_level=2, step=0.002)
    config.sampler_names = ("reverse", "toy")
    config.num_samples = 100
    config.grid.size = 60
    config.figure.grid_size = 20
    result = common.run(config, str(tmp_path))
    toy = next(r for r in result["rows"] if r["sampler"] == "toy")
    assert toy["status"] == "ok" and toy["kernel"] == "toy"
    assert toy["nfe"] == 10 * (1 + 2) and toy["accept"] is None  # no Metropolis test
    assert np.load(tmp_path / "samples" / "product_oracle_toy.npz")["x"].shape == (100, 2)
    assert "| product | oracle | toy |" in (tmp_path / "table2d.md").read_text()


def test_sample_py_runs_a_registered_kernel_by_name(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.join(ROOT, "tests"), ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "scripts/sample.py", "--register=toy_kernel", "--model=r=oracle:ring",
         "--sampler=toy", "--steps_per_level=1", "--levels=10", "--num=50", "--noverdict",
         f"--out={tmp_path / 'toy'}"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("toy on ") and "NFE 20" in proc.stdout
    assert np.load(tmp_path / "toy.npz")["x"].shape == (50, 2)
