"""The experiment protocol: registry, lock, strict JSON, Markdown with claims, and configs."""

import importlib
import json
import pathlib

import ml_collections
import pytest

from compdiff import workdir as workdir_lib
from compdiff.experiments import common
from configs import common as config_common

# every config file of configs/experiments/ (each names its experiment)
EXPERIMENTS = sorted(p.stem for p in pathlib.Path(__file__).parent.parent.joinpath(
    "configs", "experiments").glob("*.py") if p.stem != "__init__")


def _config(name: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"experiment": name, "variant": "t"})


def test_registry_names_every_experiment_and_every_config_names_one():
    assert set(EXPERIMENTS) == set(common.names())
    for name in EXPERIMENTS:
        config_module = importlib.import_module(f"configs.experiments.{name}")
        assert config_module.get_config("quick").experiment == name
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        common.get("nope")


def test_protocol_writes_strict_json_markdown_and_claims(tmp_path):
    result = common.run(_config("toy_experiment"), str(tmp_path))  # a dotted-less module path
    saved = json.loads((tmp_path / "toy_experiment.json").read_text())
    assert saved == result and saved["rows"][0]["score"] is None  # NaN -> null
    assert saved["experiment"] == "toy_experiment" and saved["variant"] == "t"
    assert "jax" in saved["machine"] and saved["wall_seconds"] >= 0
    (claim,) = saved["claims"]
    assert claim["p_value"] == pytest.approx(2 / 2 ** 6) and claim["verdict"] == "holds"
    text = (tmp_path / "toy_experiment.md").read_text()
    assert text.startswith("| name | score |") and claim["text"] in text and "Machine:" in text


def test_protocol_holds_the_workdir_lock(tmp_path):
    with workdir_lib.lock(str(tmp_path)):
        with pytest.raises(workdir_lib.WorkdirInUse):
            common.run(_config("toy_experiment"), str(tmp_path))
    with pytest.raises(ValueError, match="names no experiment"):
        common.run(ml_collections.ConfigDict({"x": 1}), str(tmp_path))


def test_sampler_rows_read_every_sampler_field_through_the_registry():
    row = config_common.sampler_row("hmc", steps_per_level=2, step=(0.1, 1.0),
                                    resample_ess=0.5, extras={"models": ["energy"]})
    assert row.models == ["energy"] and row.sampler.step.to_dict() == {"a": 0.1, "b": 1.0}
    sampler = common.make_sampler(row)
    assert (sampler.steps_per_level, sampler.step.b, common.row_label(row)) == (2, 1.0,
                                                                                "hmc+smc")
    with pytest.raises(ValueError, match="step size and mass must be positive"):
        config_common.sampler_row("hmc", step=-0.1)  # checked when the config is built
    equal = config_common.sampler_row("reverse_equal")
    assert common.make_sampler(equal, budget=40).nfe(20) == 40
    budget = common.equal_nfe([row, equal], "linear", 20)
    assert budget.nfe == 20 * (1 + 2 * 3) and budget.levels - budget.offset == budget.nfe


def test_variant_parser():
    parse = config_common.parse_variant
    assert parse("cpu,param=eps", words={"size": ("cpu", "tiny")},
                 keys={"param": ("eps", "energy")}, defaults={"param": "energy"}) == {
        "size": "cpu", "param": "eps"}
    assert parse("flag=True", keys={"flag": (True, False)}) == {"flag": True}
    with pytest.raises(ValueError, match="bad config variant 'huge'"):
        parse("huge", words={"size": ("cpu",)})
    with pytest.raises(ValueError, match="unknown param 'x'; known"):
        parse("param=x", keys={"param": ("eps",)})
    with pytest.raises(ValueError, match="names no size"):
        parse("", words={"size": ("cpu",)}, required=("size",))
    with pytest.raises(ValueError, match="unknown table variant 'big'"):
        config_common.variant("big", ("quick",), "table", "quick")


def test_image_rows_are_named_as_the_registry_names_them():
    mala = dict(steps_per_level=1, step=0.035)
    hmc = dict(steps_per_level=1, leapfrog=1, step=0.1, damping=0.5)
    rows = config_common.image_rows(mala, hmc, ["energy"], models_of={"reverse_equal": ["eps"]})
    assert [common.row_label(r) for r in rows] == list(config_common.IMAGE_ROWS)
    assert [list(r.models) for r in rows[:2]] == [["energy"], ["eps"]]
    adapted = common.make_sampler(rows[-1])
    assert (adapted.adapt, adapted.matched_reference, adapted.steps_per_level) == (0.6, True, 3)
    picked = config_common.image_rows(mala, hmc, ["x"], labels=("hmc+smc", "reverse"))
    assert [common.row_label(r) for r in picked] == ["hmc+smc", "reverse"]
    with pytest.raises(ValueError, match="unknown image rows"):
        config_common.image_rows(mala, hmc, ["x"], labels=("mala+typo",))
