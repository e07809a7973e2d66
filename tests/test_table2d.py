"""The 2D table pipeline at a tiny size: oracles plus tiny score-only models."""

import json
import os

import jax
import numpy as np
import pytest

from compdiff import samplers, schedules
from compdiff.data import toy2d
from compdiff.experiments import common
from configs.common import sampler_row
from configs.experiments import table2d as table_config


def test_equal_nfe_levels_match_cost_and_noise_level():
    base = schedules.get("linear", 100)
    levels, offset = samplers.equal_cost_levels("linear", float(base.sigma[1]), 1100)
    assert levels - offset == 1100
    sigma = float(schedules.get("linear", levels).sigma[offset + 1])
    assert sigma == pytest.approx(float(base.sigma[1]), rel=0.1)


def test_level_shift_reads_the_longer_schedule():
    long = schedules.get("linear", 50)
    ring = toy2d.get("ring", long)
    shifted = samplers.shift_levels(ring, 7)
    schedule = samplers.shift_schedule(long, 7)
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 2))
    np.testing.assert_allclose(shifted.log_prob(x, 3), ring.log_prob(x, 10), rtol=1e-6)
    np.testing.assert_allclose(shifted.score(x, 3), ring.score(x, 10), rtol=1e-6)
    assert schedule.num_levels == 43 and float(schedule.sigma[3]) == float(long.sigma[10])


def test_quick_and_paper_configs_are_complete():
    for variant in table_config.VARIANTS:
        config = table_config.get_config(variant)
        for name in config.composition_names:
            assert name in config.compositions
        assert set(config.sampler_names) == {"reverse", "reverse_equal", "ula", "uhmc", "mala",
                                             "hmc", "mala_smc", "hmc_smc"}
        labels = {common.row_label(config.samplers[s]) for s in config.sampler_names}
        assert {"reverse_equal", "mala+smc", "hmc+smc"} <= labels and config.experiment == "table2d"
    with pytest.raises(ValueError, match="unknown table2d variant"):
        table_config.get_config("huge")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    config = table_config.get_config("quick")
    config.schedule.num_levels = 20
    config.models = ("oracle", "eps", "energy")
    config.composition_names = ("product", "mixture")
    config.compositions.mixture.models = ("oracle", "eps")  # eps: n/a without training
    # a second reverse row: with common random numbers it repeats the first exactly
    config.samplers.again = sampler_row("reverse", label="reverse2")
    # one Metropolis row (HMC on the same oracles: tests/test_annealed.py)
    config.sampler_names = ("reverse", "reverse_equal", "mala", "again")
    config.num_samples = 300
    config.grid.size = 150
    config.grid.model_size = 60
    config.figure.grid_size = 40
    config.train.model.hidden = 16
    config.train.model.num_blocks = 1
    config.train.train.steps = 20
    config.train.train.log_every = 20
    config.train.train.checkpoint_every = 20
    workdir = str(tmp_path_factory.mktemp("table2d"))
    return config, workdir, common.run(config, workdir)


def test_files_and_rows(tiny_run):
    config, workdir, result = tiny_run
    with open(os.path.join(workdir, "table2d.json")) as f:
        assert json.load(f)["rows"] == result["rows"]
    assert len(result["rows"]) == (3 + 2) * 4  # (product + mixture) models x samplers
    assert "jax" in result["machine"] and result["wall_seconds"] > 0
    assert result["experiment"] == "table2d" and result["config"]["variant"] == "quick"
    for name in config.composition_names:
        assert os.path.getsize(os.path.join(workdir, "figures", f"{name}.png")) > 0
    for row in result["rows"]:
        path = os.path.join(workdir, "samples",
                            f"{row['composition']}_{row['model']}_{row['sampler']}.npz")
        if row["status"] == "ok":
            assert np.load(path)["x"].shape == (config.num_samples, 2)
            assert np.isfinite(row["ll_exact"]) and row["nfe"] > 0
        else:
            assert not os.path.exists(path)
    with open(os.path.join(workdir, "table2d.md")) as f:
        assert "| product | oracle | mala |" in f.read()


def test_impossible_cells_carry_the_library_reason(tiny_run):
    _, _, result = tiny_run
    na = {(r["composition"], r["sampler"]): r["reason"] for r in result["rows"]
          if r["status"] == "n/a"}
    assert all(r["model"] == "eps" for r in result["rows"] if r["status"] == "n/a")
    assert set(na) == {("product", "mala")} | {
        ("mixture", s) for s in ("reverse", "reverse_equal", "mala", "reverse2")}
    assert "score-only" in na["product", "mala"] and "mala" in na["product", "mala"]
    assert "mixture needs every component's log-density" in na["mixture", "reverse"]


def test_equal_cost_and_mcmc_beats_reverse_on_oracle_product(tiny_run):
    _, _, result = tiny_run
    rows = {(r["composition"], r["model"], r["sampler"]): r for r in result["rows"]}
    product = {s: rows["product", "oracle", s] for s in ("reverse", "reverse_equal", "mala")}
    assert product["reverse_equal"]["nfe"] == product["mala"]["nfe"]
    assert product["reverse"]["nfe"] == 20
    # Reverse diffusion of a product of oracles is the wrong distribution;
    # Metropolis-adjusted annealing gets much closer with the same models.
    assert product["mala"]["mmd"] < 0.5 * product["reverse"]["mmd"]
    assert product["mala"]["ll"] > product["reverse"]["ll"] + 1.0
    assert 0.5 < product["mala"]["accept"] <= 1.0


def test_energy_rows_are_also_scored_against_their_own_composition(tiny_run):
    _, _, result = tiny_run
    energy = [r for r in result["rows"] if r["model"] == "energy"]
    assert {r["sampler"] for r in energy} == {"reverse", "reverse_equal", "mala", "reverse2"}
    for r in energy:
        assert r["status"] == "ok" and np.isfinite(r["ll_model_exact"])
        assert r["mmd_model"] is not None
    assert all("mmd_model" not in r for r in result["rows"] if r["model"] != "energy")


def test_samplers_of_a_cell_share_their_initial_noise(tiny_run):
    """Common random numbers: every row of a cell samples from one key, so two rows of
    the same sampler draw the same samples (a key per row would make them independent)."""
    _, workdir, _ = tiny_run
    for model in ("oracle", "energy"):
        x = [np.load(os.path.join(workdir, "samples", f"product_{model}_{s}.npz"))["x"]
             for s in ("reverse", "reverse2")]
        np.testing.assert_array_equal(x[0], x[1])


def test_claims_are_paired_with_intervals_and_p_values(tiny_run):
    _, workdir, result = tiny_run
    (claim,) = [c for c in result["claims"] if c["claim"].startswith("product (oracle): ")]
    assert claim["b"] == "reverse_equal" and claim["a"] == "mala"
    low, high = claim["interval"]
    assert low <= claim["estimate"] <= high and 0 < claim["p_value"] <= 1
    assert claim["test"] == "paired bootstrap" and claim["num_pairs"] == 300
    assert claim["verdict"] in ("holds", "fails", "unresolved")
    with open(os.path.join(workdir, "table2d.md")) as f:
        assert claim["text"] in f.read()


def test_rows_show_level_one_acceptance_mode_weights_and_divergence(tiny_run):
    _, workdir, result = tiny_run
    rows = {(r["composition"], r["model"], r["sampler"]): r for r in result["rows"]}
    mala = rows["product", "oracle", "mala"]
    assert mala["accept_level1"] < mala["accept"]  # the mean over levels hides level 1
    assert mala["diverged"] == 0 and 0 <= mala["mode_tv"] <= 1
    assert rows["product", "oracle", "reverse"]["accept_level1"] is None
    with open(os.path.join(workdir, "table2d.md")) as f:
        table = f.read()
    assert "| mode TV |" in table and "| accept (level 1) |" in table
    assert f"{mala['accept']:.2f} ({mala['accept_level1']:.2f})" in table
