"""The high-dimensional benchmark end to end at its tiny size (the samplers' exactness at
d >= 64 is tested in tests/test_smc.py)."""

from __future__ import annotations

import json
import os

import numpy as np

from compdiff.experiments import common
from configs.experiments import highdim as highdim_config


def test_tiny_benchmark_end_to_end(tmp_path, capsys):
    config = highdim_config.get_config("tiny")
    workdir = str(tmp_path / "run")
    result = common.run(config, workdir)
    saved = json.loads(open(os.path.join(workdir, "highdim.json")).read())
    assert saved["rows"] == json.loads(json.dumps(common.strict(result["rows"])))
    assert [r["label"] for r in saved["rows"]] == [common.row_label(r) for r in config.samplers]
    with open(os.path.join(workdir, "rows.jsonl")) as f:  # kept as the run goes
        assert [json.loads(line)["label"] for line in f] == [r["label"] for r in saved["rows"]]
    for r in saved["rows"]:
        assert r["dim"] == 8 and r["nfe"] > 0 and 0 <= r["mode_tv"] <= 1
        assert r["tv_ci"][0] <= r["mode_tv"] <= r["tv_ci"][1]
        assert np.isfinite(r["var_background"]) and r["tv_floor"] > 0
    # progress: every row with the count and an ETA
    out = capsys.readouterr().out
    assert f"[{len(saved['rows'])}/{len(saved['rows'])}]" in out and "ETA" in out
    assert os.path.exists(os.path.join(workdir, "figures", "highdim_product_nfe.png"))
    assert "reverse" in open(os.path.join(workdir, "highdim.md")).read()
