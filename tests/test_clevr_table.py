"""The CLEVR table: the accuracy computation on hand-made cases, and the table at tiny size."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from compdiff.experiments import clevr_table, common
from configs.experiments import clevr_table as table_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_accuracy_needs_every_requested_position():
    probs = np.array([[0.9, 0.8, 0.6],   # all present: correct
                      [0.9, 0.4, 0.99],  # one missing: wrong
                      [0.51, 0.51, 0.51],
                      [0.5, 0.9, 0.9]])  # exactly 0.5 is not "> 0.5"
    assert clevr_table.accuracy(probs) == 0.5
    assert clevr_table.accuracy(np.array([[0.7]])) == 1.0
    with pytest.raises(ValueError, match="images, positions"):
        clevr_table.accuracy(np.array([0.7, 0.2]))


class _LeftHalf(nn.Module):
    """A hand-made 'classifier': an object is present wherever the query has u < 0.5."""

    @nn.compact
    def __call__(self, x, t, cond):
        scale = self.param("scale", nn.initializers.ones, ())
        return scale * 10.0 * (0.5 - cond.value[:, :1])


def test_presence_probs_keep_images_and_positions_apart():
    positions = np.array([[[0.1, 0.5], [0.9, 0.5]],
                          [[0.2, 0.2], [0.3, 0.8]],
                          [[0.7, 0.1], [0.8, 0.9]]], np.float32)
    probs = clevr_table.presence_probs(_LeftHalf(), {"scale": jnp.ones(())},
                                       jnp.zeros((3, 12)), positions)
    np.testing.assert_array_equal(probs > 0.5, [[True, False], [True, True], [False, False]])
    assert clevr_table.accuracy(probs) == pytest.approx(1 / 3)


def test_claims_pair_the_outcomes_of_each_image():
    rows = []
    for k in (3, 4):
        for model, sampler, steps, hits in (("energy", "reverse", 0, [1, 0, 0, 0, 0, 1]),
                                            ("energy", "hmc", 1, [1, 1, 1, 1, 1, 1]),
                                            ("energy", "uhmc", 1, [1, 0, 1, 0, 1, 1])):
            rows.append({"num_positions": k, "model": model, "sampler": sampler,
                         "kernel_steps": steps, "correct": hits, "accuracy": np.mean(hits)})
    mcmc, adjusted = clevr_table.claims({"rows": rows})
    assert (mcmc["a"], mcmc["b"], mcmc["test"]) == ("energy hmc", "energy reverse",
                                                    "exact McNemar")
    assert mcmc["num_pairs"] == 12 and mcmc["estimate"] == pytest.approx(8 / 12)
    assert mcmc["p_value"] == pytest.approx(2 / 2 ** 8) and mcmc["verdict"] == "holds"
    assert adjusted["claim"].startswith("Metropolis-adjusted beats unadjusted, hmc vs uhmc")
    assert adjusted["p_value"] == pytest.approx(2 / 2 ** 4)  # 4 discordant pairs: unresolved
    assert adjusted["verdict"] == "unresolved"


def test_table_at_tiny_size(tmp_path):
    config = table_config.get_config("tiny")
    config.data_dir = str(tmp_path / "data")
    result = common.run(config, str(tmp_path / "run"))
    with open(tmp_path / "run" / "clevr_table.json") as f:
        saved = json.load(f)
    assert saved["rows"] == result["rows"]
    assert 0.0 <= saved["classifier_accuracy"] <= 1.0
    assert saved["machine"] and saved["wall_seconds"] > 0
    cells = {(r["model"], r["sampler"], r["num_positions"]): r for r in saved["rows"]}
    for key in [("eps", "reverse", 2), ("energy", "reverse", 2), ("eps", "reverse_equal", 2),
                ("energy", "mala", 2), ("energy", "hmc+smc", 2)]:
        row = cells[key]
        assert 0.0 <= row["accuracy"] <= 1.0 and row["nfe"] > 0 and row["seconds"] > 0, key
        assert 0 <= row["noise"] <= row["num_images"] == len(row["correct"]), key
        assert sum(row["correct"]) <= row["num_images"] - row["noise"], key  # noise: wrong
    # SMC resamples, so each image (its own positions) is its own population
    assert cells[("energy", "hmc+smc", 2)]["population"] == config.smc_population >= 2
    assert "population" not in cells[("energy", "mala", 2)]
    # Equal cost: reverse_equal spends what the MCMC rows spend; reverse spends T.
    assert cells[("eps", "reverse_equal", 2)]["nfe"] == cells[("energy", "mala", 2)]["nfe"]
    assert cells[("energy", "reverse", 2)]["nfe"] == config.models.energy.schedule.num_levels
    # Paired: one key per K, so reverse diffusion on eps and energy draws the same noise,
    # and each image's outcome is kept for the paired claims.
    assert len(cells[("energy", "mala", 2)]["correct"]) == config.num_images
    assert cells[("eps", "mala", 2)]["status"] == "n/a"
    assert "score-only" in cells[("eps", "mala", 2)]["reason"]
    text = open(tmp_path / "run" / "clevr_table.md").read()
    assert "| energy | mala |" in text and "Machine:" in text
    figures = os.listdir(tmp_path / "run" / "figures")
    assert {"accuracy_vs_steps.png", "k2_energy_mala.png", "k2_eps_reverse.png"} <= set(figures)
    # The table's trained energy model through scripts/energy_levels.py (the check of
    # docs/smc.md on trained models): one row per level, every value finite.
    out = tmp_path / "levels.json"
    proc = subprocess.run([sys.executable, "scripts/energy_levels.py",
                           f"--workdir={tmp_path / 'run' / 'models' / 'energy'}", "--num=4",
                           "--levels=2,3", f"--out={out}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    levels = json.loads(out.read_text())
    assert [r["level"] for r in levels["rows"]] == [2, 3] and levels["num"] == 4
    assert all(np.isfinite(v) for r in levels["rows"] for v in r.values())
    assert "| noise favoured |" in (tmp_path / "levels.md").read_text()
    # ... and through scripts/noise_chains.py (docs/guidance.md, noise images).
    out = tmp_path / "chains.json"
    proc = subprocess.run([sys.executable, "scripts/noise_chains.py",
                           f"--workdir={tmp_path / 'run' / 'models' / 'energy'}", "--num=4",
                           f"--out={out}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    chains = json.loads(out.read_text())
    assert chains["num"] == 4 and 0 <= chains["noise"] <= 4
    assert [r["level"] for r in chains["rows"]] == [20, 10, 5, 2, 1]  # 20 levels in tiny
