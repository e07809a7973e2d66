"""The text-to-image table (RRR 5.4 at CPU scale): its prompts, scoring and a tiny run."""

import json
import os

import numpy as np
import pytest

from compdiff import prompts
from compdiff.data import captioned_scenes as cs
from compdiff.evaluation import concepts
from compdiff.experiments import common, text2image_table
from configs.experiments import text2image_table as table_config

pytest.importorskip("tokenizers")

HELD = {(cs.SHAPES.index(s), cs.COLOURS.index(c)) for s, c in cs.HELD_OUT}


@pytest.mark.parametrize("variant", table_config.VARIANTS)
def test_every_prompt_is_scorable_and_only_held_out_prompts_name_held_out_pairs(variant):
    config = table_config.get_config(variant)
    assert config.models.generator.model.parameterization == "energy_dae"  # OR, MALA, HMC
    for comp in config.compositions:
        for prompt in comp.prompts:
            required, forbidden, any_of = concepts.requirements(prompts.parse_prompt(prompt))
            named = set(required) | set(forbidden) | {c for g in any_of for c in g}
            assert bool(named & HELD) == (comp.name == "held-out pair"), prompt
            assert {"AND NOT": bool(forbidden), "OR": bool(any_of)}.get(comp.name, True)
    with pytest.raises(ValueError, match="unknown text2image_table variant"):
        table_config.get_config("huge")


def test_claims_pool_the_multi_concept_rows_by_pairs():
    rows = [{"composition": c, "sampler": s, "accuracy": np.mean(hits), "correct": hits,
             "concept_accuracy": 1.0, "nfe": 1, "seconds": 1.0}
            for c in text2image_table.MULTI_CONCEPT
            for s, hits in (("reverse", [0, 0, 1, 0]), ("hmc", [1, 1, 1, 0]))]
    (claim,) = text2image_table.claims({"rows": rows})
    assert claim["num_pairs"] == 16 and claim["estimate"] == pytest.approx(0.5)
    assert claim["p_value"] == pytest.approx(2 / 2 ** 8) and claim["verdict"] == "holds"
    rows.append({"composition": "1 concept", "sampler": "reverse", "accuracy": 0.9,
                 "concept_accuracy": 0.9, "nfe": 1, "seconds": 1.0, "correct": [1]})
    result = {"rows": rows, "classifier_accuracy": 0.96,
              "classifier": {"all_concepts_accuracy": 0.98},
              "config": {"num_images": 4, "compositions": [{"name": "OR", "prompts": ["x"]}]}}
    text = text2image_table.markdown(result)
    assert "model error 0.10" in text and "0.960" in text
    # adapted rows get the same claim, paired with reverse diffusion on the same images
    rows += [{**r, "sampler": "mala+adapt", "correct": [1, 1, 1, 1]} for r in rows
             if r["sampler"] == "reverse" and r["composition"] != "1 concept"]
    claims = text2image_table.claims({"rows": rows})
    assert [c["a"] for c in claims] == ["hmc", "mala+adapt"]
    assert claims[1]["estimate"] == pytest.approx(0.75) and claims[1]["num_pairs"] == 16


def test_compile_sharing_charges_each_shared_cell_its_samplers_mean_compile():
    rows = [{"sampler": s, "seconds": sec, "compiles": n, "compile_seconds": c}
            for s, sec, n, c in (("reverse", 10.0, 1, 4.0), ("reverse", 3.0, 0, 0.0),
                                 ("hmc", 20.0, 1, 8.0), ("hmc", 25.0, 1, 12.0),
                                 ("hmc", 9.0, 0, 0.0), ("hmc", 9.0, 0, 0.0))]
    sharing = text2image_table.compile_sharing(rows)
    assert sharing == {"cells": 6, "compiles": 3, "sampling_seconds": 76.0,
                       "compile_seconds": 24.0, "unshared_extra_seconds": 4.0 + 2 * 10.0}
    assert text2image_table.compile_sharing([{"sampler": "hmc", "seconds": 1.0}]) is None


def test_tiny_table_end_to_end(tmp_path):
    config = table_config.get_config("tiny")
    config.data_dir = str(tmp_path / "data")
    # OR: a mixture of products over one network's conditions (the most composed type); the
    # scoring of every type is checked above (CI minutes: each cell compiles its sampler)
    config.compositions = [c for c in config.compositions if c.name == "OR"]
    workdir = tmp_path / "table"
    result = common.run(config, str(workdir))
    saved = json.loads((workdir / "text2image_table.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert {(r["composition"], r["sampler"]) for r in saved["rows"]} == {
        ("OR", s) for s in ("reverse", "hmc+smc")}
    for r in saved["rows"]:
        assert 0.0 <= r["accuracy"] <= r["concept_accuracy"] <= 1.0 and r["nfe"] > 0
        assert r["accuracy"] == np.mean(r["correct"]) and len(r["correct"]) == 2
        assert set(r) >= {"composition", "prompt", "model", "sampler", "accuracy", "nfe",
                          "seconds", "noise"}
        assert 0 <= r["noise"] <= len(r["correct"])
        assert r["compiles"] in (0, 1) and r["compile_seconds"] >= 0  # 0: cache hits
        assert sum(r["correct"]) <= len(r["correct"]) - r["noise"]  # noise: wrong
    assert 0.0 <= saved["classifier_accuracy"] <= 1.0 and saved["wall_seconds"] > 0
    with np.load(workdir / "samples" / "OR_0_reverse.npz") as f:
        assert f["x"].dtype == np.uint8 and f["x"].shape == (2, 16, 16, 3)
    assert os.path.exists(workdir / "figures" / "OR.png")
    assert "| OR | hmc+smc |" in (workdir / "text2image_table.md").read_text()
