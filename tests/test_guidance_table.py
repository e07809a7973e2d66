"""The classifier-guidance table (RRR Table 3 at CPU scale): its scoring and a tiny run."""

import json
import os

import numpy as np
import pytest

from compdiff import guidance_table
from configs import guidance_table as guidance_table_config


def test_accuracy_counts_requested_class_above_one_half():
    probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5], [0.1, 0.9]])
    # Correct: row 0 (0.6 for class 0) and row 3 (0.9 for class 1); 0.5 is not > 0.5.
    assert guidance_table.accuracy(probs, np.array([0, 0, 1, 1])) == 0.5
    with pytest.raises(ValueError, match="labels"):
        guidance_table.accuracy(probs, np.array([0, 1]))


def test_requested_classes_ask_every_class_in_turn():
    np.testing.assert_array_equal(guidance_table.requested_classes(7, 3), [0, 1, 2, 0, 1, 2, 0])


def _result(rows, num_images=100):
    return {"rows": rows, "config": {"dataset_configs": {"d": {"num_images": num_images}}}}


def test_claims_verdicts_and_oracle_floor():
    rev = {"dataset": "d", "model": "eps", "sampler": "reverse", "accuracy": 0.3, "frechet": 5.0}
    hmc = {"dataset": "d", "model": "energy", "sampler": "hmc", "accuracy": 0.9, "frechet": 4.0}
    (line,) = guidance_table.claims(_result([rev, hmc]))
    assert "holds" in line and "without hurting" in line
    (line,) = guidance_table.claims(_result([rev, {**hmc, "accuracy": 0.1, "frechet": 9.0}]))
    assert "fails" in line and "larger Frechet" in line
    (line,) = guidance_table.claims(_result([rev, {**hmc, "accuracy": 0.32}]))
    assert "unresolved" in line
    oracle = [{"dataset": "oracle", "sampler": "reverse", "scale": 3.0, "mmd": 0.09,
               "mmd_floor": 0.002},
              {"dataset": "oracle", "sampler": "hmc", "scale": 3.0, "mmd": 0.004,
               "mmd_floor": 0.002}]
    (line,) = guidance_table.claims(_result(oracle))
    assert line.endswith("hmc.") and "reverse" not in line


def test_held_out_claim_compares_composed_attributes_with_the_joint_classifier():
    rows = [{"dataset": "s held-out pairs", "model": f"energy + {m}", "sampler": "hmc",
             "accuracy": a, "frechet": 1.0, "num_images": 60}
            for m, a in (("shape, colour classifiers", 0.8), ("joint classifier", 0.1))]
    (line,) = guidance_table.claims(_result(rows))
    assert "accuracy 0.80 against 0.10" in line and "holds" in line


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
    result = guidance_table.run(config, str(workdir))
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
    assert 0.0 <= saved["judge_accuracy"]["digits"] <= 1.0
    with np.load(workdir / "digits" / "samples" / "energy_reverse.npz") as f:
        assert f["arr_0"].dtype == np.uint8 and f["arr_0"].shape == (4, 16, 16, 3)
    assert os.path.exists(workdir / "figures" / "accuracy_vs_scale.png")
    assert os.path.exists(workdir / "figures" / "digits_energy_hmc+smc.png")
    assert "| digits | energy | reverse |" in (workdir / "guidance_table.md").read_text()
