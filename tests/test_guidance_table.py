"""The classifier-guidance table (RRR Table 3 at CPU scale): its scoring and a tiny run."""

import json
import os

import numpy as np
import pytest

from compdiff.experiments import common, guidance_table
from configs.experiments import guidance_table as guidance_table_config


def test_accuracy_counts_requested_class_above_one_half():
    probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5], [0.1, 0.9]])
    # Correct: row 0 (0.6 for class 0) and row 3 (0.9 for class 1); 0.5 is not > 0.5.
    assert guidance_table.accuracy(probs, np.array([0, 0, 1, 1])) == 0.5
    with pytest.raises(ValueError, match="labels"):
        guidance_table.accuracy(probs, np.array([0, 1]))


def test_requested_classes_ask_every_class_in_turn():
    np.testing.assert_array_equal(guidance_table.requested_classes(7, 3), [0, 1, 2, 0, 1, 2, 0])


def _row(model, sampler, steps, hits, frechet=1.0, dataset="d"):
    return {"dataset": dataset, "model": model, "sampler": sampler, "kernel_steps": steps,
            "correct": hits, "accuracy": float(np.mean(hits)), "frechet": frechet}


def test_claims_are_paired_verdicts():
    rev = _row("eps", "reverse", 0, [0] * 10 + [1] * 10, frechet=5.0)
    hmc = _row("energy", "hmc", 1, [1] * 20, frechet=4.0)
    (claim,) = guidance_table.claims({"rows": [rev, hmc]})
    assert claim["verdict"] == "holds" and "without hurting" in claim["text"]
    assert claim["p_value"] == pytest.approx(2 / 2 ** 10) and claim["num_pairs"] == 20
    (claim,) = guidance_table.claims({"rows": [rev, _row("energy", "hmc", 1, [0] * 20, 9.0)]})
    assert claim["verdict"] == "fails" and "larger Frechet" in claim["text"]
    (claim,) = guidance_table.claims({"rows": [rev, _row("energy", "hmc", 1,
                                                         [1] * 3 + [0] * 7 + [1] * 10)]})
    assert claim["verdict"] == "unresolved"
    oracle = [{"dataset": "oracle", "sampler": "reverse", "scale": 3.0, "mmd": 0.09,
               "mmd_floor": 0.002},
              {"dataset": "oracle", "sampler": "hmc", "scale": 3.0, "mmd": 0.004,
               "mmd_floor": 0.002}]
    assert guidance_table.claims({"rows": oracle}) == []
    (line,) = guidance_table.oracle_notes({"rows": oracle})
    assert line.endswith("hmc.") and "reverse" not in line


def test_held_out_claim_compares_composed_attributes_with_the_joint_classifier():
    rows = [_row(f"energy + {m}", "hmc", 1, hits, dataset="s held-out pairs")
            for m, hits in (("shape, colour classifiers", [1] * 8 + [0] * 2),
                            ("joint classifier", [0] * 10))]
    (claim,) = guidance_table.claims({"rows": rows})
    assert claim["estimate"] == pytest.approx(0.8) and claim["verdict"] == "holds"


@pytest.mark.parametrize("variant", guidance_table_config.VARIANTS)
def test_every_model_of_a_dataset_reads_the_same_images_and_levels(variant):
    """A classifier guides (and a judge scores) the generator's own images: same builder
    resolution; a guidance classifier is trained on the generator's noise levels."""
    config = guidance_table_config.get_config(variant)
    for name in config.datasets:
        models = config.dataset_configs[name].models
        assert len({m.data.source for m in models.values()}) == 1, name
        assert len({m.data.builder_config.removesuffix("_all") for m in models.values()}) == 1
        levels = models.energy.schedule.num_levels
        for kind in ("classifier", "shape_classifier", "colour_classifier"):
            if kind in models:
                assert models[kind].schedule.num_levels == levels, (name, kind)
        sub = config.dataset_configs[name]
        if "attribute_pairs" in sub:  # held-out pairs are never asked of the joint classifier
            held = {guidance_table.scene_classes.class_label(*p) for p in sub.attribute_pairs.pairs}
            assert held and not held & set(sub.classes)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="unknown guidance_table variant 'huge'"):
        guidance_table_config.get_config("huge")


def test_tiny_table_end_to_end(tmp_path):
    config = guidance_table_config.get_config("tiny")
    config.data_dir = str(tmp_path / "data")
    workdir = tmp_path / "table"
    result = common.run(config, str(workdir))
    saved = json.loads((workdir / "guidance_table.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    by_kind = {(r["dataset"], r["model"], r["sampler"]) for r in saved["rows"]}
    assert {("oracle", "exact", "reverse"), ("oracle", "exact", "hmc"),
            ("digits", "eps", "reverse"), ("digits", "energy", "reverse"),
            ("digits", "energy", "hmc+smc"), ("digits", "conditional eps", "cfg")} <= by_kind
    # The eps model under a Metropolis row is an n/a row with the reason, not a crash.
    na = [r for r in saved["rows"] if r.get("status") == "n/a"]
    assert na and all("score-only" in r["reason"] for r in na)
    for r in saved["rows"]:
        if r["dataset"] == "digits" and "status" not in r:
            assert 0.0 <= r["accuracy"] <= 1.0 and np.isfinite(r["frechet"])
            assert 0.0 <= r["precision"] <= 1.0 and 0.0 <= r["recall"] <= 1.0
            assert 0 <= r["noise"] <= len(r["correct"])
            assert sum(r["correct"]) <= len(r["correct"]) - r["noise"]  # noise: wrong
    assert 0.0 <= saved["judge_accuracy"]["digits"] <= 1.0
    # SMC: each asked class is its own population of smc_population chains (one call).
    smc = next(r for r in saved["rows"] if r["sampler"] == "hmc+smc" and r["model"] == "energy")
    assert smc["population"] == config.dataset_configs.digits.smc_population
    # Paired: every main row of a dataset asks the same classes from the same key.
    digits = [r for r in saved["rows"] if r["dataset"] == "digits" and "correct" in r]
    assert digits and all(len(r["correct"]) == 4 for r in digits)
    with np.load(workdir / "digits" / "samples" / "energy_reverse.npz") as f:
        assert f["arr_0"].dtype == np.uint8 and f["arr_0"].shape == (4, 16, 16, 3)
    assert os.path.exists(workdir / "figures" / "accuracy_vs_scale.png")
    assert os.path.exists(workdir / "figures" / "digits_energy_hmc+smc.png")
    assert "| digits | energy | reverse |" in (workdir / "guidance_table.md").read_text()
