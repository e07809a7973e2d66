"""Text-to-image end to end at tiny size: train on captioned scenes, sample a prompt."""

import json

import ml_collections
import numpy as np
import pytest

from compdiff import text2image, train
from compdiff.data import examples
from compdiff.models.loading import load_model
from compdiff.training import tasks
from configs.models import text2image as text2image_config
from configs.models import text2image_classifier
from tests.test_cli import assert_one_line, run_script

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("t2i")
    config = text2image_config.get_config("tiny")
    config.data.data_dir = str(workdir / "data")
    train.train(config, str(workdir / "run"))
    return workdir / "run"


@pytest.fixture(scope="module")
def judge_run(text_run):
    config = text2image_classifier.get_config("tiny")
    config.data.data_dir = str(text_run.parent / "data")
    train.train(config, str(text_run.parent / "judge"))
    return text_run.parent / "judge"


def test_caption_conditions_are_the_encoders_embeddings():
    """Training conditions are the tower's pooled embeddings of the captions, one row each."""
    table = examples.caption_embeddings("minilm")
    from compdiff import text
    from compdiff.data import captioned_scenes

    vocabulary = captioned_scenes.caption_vocabulary()
    assert table.shape == (len(vocabulary), text2image_config.TEXT_DIM)
    rows = [0, len(vocabulary) // 2, len(vocabulary) - 1]
    np.testing.assert_allclose(
        table[rows], text.get("minilm").encode([vocabulary[i] for i in rows]).pooled, atol=1e-5)


def test_sample_script_writes_a_grid_for_a_prompt(text_run, judge_run, tmp_path):
    out = tmp_path / "out"
    proc = run_script("sample.py", f"--model={text_run}", "--prompt=a red cube AND NOT "
                      "a blue sphere:0.5", "--sampler=uhmc", "--num=3", f"--out={out}",
                      f"--judge={judge_run}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "samples.json").read_text())
    assert summary["tree"] == "a red cube AND NOT a blue sphere:0.5" and summary["nfe"] > 0
    # scored by the judge: 3 images, each meets both requirements or not
    assert summary["accuracy"] in (0, 1 / 3, 2 / 3, 1)
    assert 0 <= summary["accuracy"] <= summary["concept_accuracy"] <= 1
    with np.load(out / "samples.npz") as f:
        assert f["x"].shape == (3, *text2image.image_shape(str(text_run))) and \
            f["x"].dtype == np.uint8
    assert (out / "grid.png").stat().st_size > 0


def test_prompt_errors_are_one_line(text_run, judge_run, tmp_path):
    proc = run_script("sample.py", f"--model={text_run}", "--prompt=a red cube AND",
                      f"--out={tmp_path}")
    assert_one_line(proc, "sample.py", "position")
    # a prompt the judge has no rule for fails before sampling (in process: no sampler
    # compile happens before the error)
    with pytest.raises(ValueError, match="cannot score"):
        text2image.sample_prompt(str(text_run), "NOT (a red cube OR a blue cube) AND a green "
                                 "cube", judge=str(judge_run))


def test_caption_gap_script_reports_the_three_losses(text_run):
    proc = run_script("caption_gap.py", f"--workdir={text_run}", "--num=8", "--draws=1")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["num"] == 8 and out["absent_minus_true_se"] >= 0
    for key in ("true_loss", "absent_loss", "null_loss"):
        assert np.isfinite(out[key]) and out[key] > 0
    assert out["absent_minus_true"] == pytest.approx(out["absent_loss"] - out["true_loss"],
                                                     abs=1e-3)


def test_the_run_standardizes_captions_by_the_training_conditions(text_run):
    """The saved config carries the statistics of the training conditions, and the rebuilt
    network reads them."""
    config = json.loads((text_run / "config.json").read_text())
    source = tasks.make_data(ml_collections.ConfigDict(config), None)
    shift, scale = source.condition_stats()
    np.testing.assert_allclose(config["model"]["cond_shift"], shift, rtol=1e-6)
    np.testing.assert_allclose(config["model"]["cond_scale"], scale, rtol=1e-6)
    model = load_model(str(text_run))
    assert len(model.apply_fn.module.cond_shift) == text2image_config.TEXT_DIM
