"""The concept-presence classifier of the text-to-image setup and prompt scoring."""

from __future__ import annotations

import itertools
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from compdiff import prompts, train
from compdiff.data import captioned_scenes as cs
from compdiff.data import examples, images
from compdiff.evaluation import concepts
from compdiff.models.classifier import ImageClassifier
from compdiff.training import tasks
from compdiff.training.state import init_state
from configs.models import classifier, clevr_classifier, text2image_classifier


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    cs.prepare("tiny_all", str(path))
    return str(path)


# ----------------------------------------------------------------------------- the example


def test_concept_vector_round_trip_and_errors():
    seen = set()
    for s, c in itertools.product(range(3), range(4)):
        v = examples.concept_vector(s, c)
        assert v.shape == (7,) and v.dtype == np.float32 and v.sum() == 2
        assert v[s] == 1 and v[3 + c] == 1
        assert examples.concept_of(v) == (s, c)
        seen.add(v.tobytes())
    assert len(seen) == 12
    for bad in ((3, 0), (0, 4), (-1, 0)):
        with pytest.raises(ValueError, match="out of range"):
            examples.concept_vector(*bad)


def test_concept_presence_labels_balance_and_hard_negatives(data_dir):
    src = cs.data_source("tiny_all", "train", data_dir)
    fn = examples.get("concept_presence")
    rng = np.random.default_rng(0)
    labels, hard, negatives, easy_possible, easy = [], 0, 0, 0, 0
    for n in range(2400):
        r = src[n % len(src)]
        out = fn(r, rng)
        assert out["label"].dtype == np.int32 and out["cond"].shape == (7,)
        np.testing.assert_array_equal(out["x"], images.to_unit_range(r["image"]))
        shape, colour = examples.concept_of(out["cond"])
        # the truth from the record's arrays, slot by slot (padding is -1)
        objects = [(int(r["shape"][k]), int(r["colour"][k])) for k in range(3)
                   if r["shape"][k] >= 0]
        assert len(objects) == int(r["count"])
        assert int(out["label"]) == int((shape, colour) in objects), (n, objects)
        labels.append(int(out["label"]))
        if not out["label"]:
            negatives += 1
            hard += any(shape == s or colour == c for s, c in objects)
            # an image leaves a pair sharing neither unless its objects cover every shape or
            # every colour
            if len({s for s, _ in objects}) < 3 and len({c for _, c in objects}) < 4:
                easy_possible += 1
                easy += not any(shape == s or colour == c for s, c in objects)
    assert 0.46 < np.mean(labels) < 0.54
    assert 0.75 < hard / negatives < 0.92  # hard=0.8, plus images with no easy negative
    assert 0.12 < easy / easy_possible < 0.28  # 1 - hard where an easy one exists
    with pytest.raises(ValueError, match="hard must be in"):
        examples.get("concept_presence:hard=2")(src[0], rng)


def test_concept_labels_are_the_objects_pairs(data_dir):
    src = cs.data_source("tiny_all", "train", data_dir)
    fn = examples.get("concept_labels")
    for n in range(len(src)):
        r = src[n]
        labels = fn(r, np.random.default_rng(0))["labels"]
        objects = {(int(r["shape"][k]), int(r["colour"][k])) for k in range(int(r["count"]))}
        assert labels.shape == (12,) and labels.dtype == np.float32
        assert {(k // 4, k % 4) for k in np.flatnonzero(labels)} == objects
    assert [examples.concept_index(s, c) for s, c in itertools.product(range(3), range(4))
            ] == list(range(12))


def test_multilabel_loss_is_the_mean_per_output_logistic_loss():
    logits = jax.random.normal(jax.random.key(0), (5, 12))
    labels = (jax.random.uniform(jax.random.key(1), (5, 12)) < 0.3).astype(np.float32)
    apply = lambda params, x, t, cond: logits  # noqa: E731
    loss = tasks.classifier_loss(None, apply, None, {"x": np.zeros((5, 3)), "labels": labels},
                                 None, noised=False)
    p = jax.nn.sigmoid(logits)
    expected = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="model.num_outputs = 12"):
        tasks.classifier_loss(None, lambda *a: logits[:, :1], None,
                              {"x": np.zeros((5, 3)), "labels": labels}, None, noised=False)


# ----------------------------------------------------------------------------- the network


def _network(config) -> ImageClassifier:
    config.model.image_shape = [16, 16, 3]
    return tasks.make_network(config)


def _names(params) -> set[str]:
    return {"/".join(k.key for k in path) for path, _ in
            jax.tree_util.tree_leaves_with_path(params)}


def _abstract_params(config, network):  # shapes only: nothing compiled
    return jax.eval_shape(lambda: init_state(config, network, jax.random.key(0))).params


def _vector_query(config):
    """The FiLM-query form of the concept classifier (one output, the concept as a vector)."""
    config.model.query, config.model.num_outputs = "vector", 1
    config.data.example = "concept_presence"
    return config


def test_vector_query_changes_the_logits_and_old_classifiers_keep_their_names():
    config = _vector_query(text2image_classifier.get_config("tiny"))
    assert ImageClassifier.query_dim == examples.CONCEPT_DIM
    net = _network(config)
    state = init_state(config, net, jax.random.key(0))
    apply = jax.jit(lambda x, q: net.apply({"params": state.params}, x, None, q)[:, 0])
    x = jax.random.normal(jax.random.key(1), (1, net.dim))
    logits = [float(apply(x, examples.concept_vector(s, c)[None])[0])
              for s, c in itertools.product(range(3), range(4))]
    assert len(set(np.round(logits, 6))) == 12, logits  # every concept its own logit
    # one image and a batch of queries, and a batch of images with one query, agree
    queries = np.stack([examples.concept_vector(s, c) for s in range(3) for c in range(4)])
    np.testing.assert_allclose(apply(np.repeat(x, 12, 0), queries), logits, rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="needs the query vectors"):
        net.apply({"params": state.params}, x, None, None)
    with pytest.raises(ValueError, match="length 7"):
        net.apply({"params": state.params}, x, None, np.zeros((1, 5)))
    new = {"query_embed/kernel", "query_embed/bias"} | {
        f"film_{level}_{block}/{p}" for level in range(2) for block in range(2)
        for p in ("kernel", "bias")}
    # the existing classifiers: the parameter names they were trained with (checkpoints)
    old = {f"Conv_{i}/{p}" for i in range(5) for p in ("kernel", "bias")} | {
        f"GroupNorm_{i}/{p}" for i in range(4) for p in ("scale", "bias")} | {
        f"Dense_{i}/{p}" for i in range(2) for p in ("kernel", "bias")}
    assert _names(state.params) == old | new
    for existing in (classifier.get_config("scenes,tiny"),
                     clevr_classifier.get_config("tiny")):
        existing.model.channel_mult = (1, 2)
        net = _network(existing)
        assert _names(_abstract_params(existing, net)) == old
    noisy = classifier.get_config("scenes,tiny,noisy=True")
    noisy.model.channel_mult = (1, 2)
    names = _names(_abstract_params(noisy, _network(noisy)))
    assert names == old | {f"Dense_{i}/{p}" for i in range(2, 7) for p in ("kernel", "bias")}


# ----------------------------------------------------------------------------- config, script


def _accuracy_script(workdir: str) -> dict:
    """scripts/classifier_accuracy.py in a subprocess: loading it here would define its absl
    flags a second time next to tests/test_class_data.py, which loads it too."""
    script = pathlib.Path(__file__).parent.parent / "scripts" / "classifier_accuracy.py"
    run = subprocess.run([sys.executable, str(script), f"--workdir={workdir}"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_configs_name_existing_builder_configs():
    names = cs.config_names()
    for size in ("tiny", "cpu", "paper"):
        c = text2image_classifier.get_config(size)
        assert (c.task, c.model.query, c.model.num_outputs) == ("classifier", "none", 12)
        assert not c.model.noise_conditional and c.data.builder_config.endswith("_all")
        assert c.data.builder_config in names
    with pytest.raises(ValueError, match="bad config variant"):
        text2image_classifier.get_config("huge")


@pytest.mark.parametrize("form", ["multilabel", "vector"])
def test_tiny_config_trains_and_is_scored(data_dir, tmp_path, form):
    config = text2image_classifier.get_config("tiny")
    if form == "vector":
        config = _vector_query(config)
    config.data.data_dir = data_dir
    workdir = str(tmp_path / "run")
    state = train.train(config, workdir)
    assert int(state.step) == 2
    out = _accuracy_script(workdir)
    assert out["num"] == 48 and out["example"] == config.data.example
    assert out["all_concepts_num"] == 48 * 12
    for key in ("accuracy", "all_concepts_accuracy", "present_recall", "absent_specificity",
                "image_accuracy", "held_out_all_concepts_accuracy"):
        assert 0.0 <= out[key] <= 1.0, key
    # the held-out pairs of captioned_scenes appear in the test images
    assert out["held_out_present_num"] > 0
    # the same decisions through compdiff.evaluation.concepts, every concept of every test image
    presence = concepts.load_presence(workdir)
    test = cs.data_source("tiny_all", "test", data_dir)
    x = np.stack([images.to_unit_range(test[i]["image"]) for i in range(len(test))])
    pairs = list(itertools.product(range(3), range(4)))
    probs = concepts.presence_probs(presence, x, pairs)
    assert probs.shape == (48, 12) and np.all((probs >= 0) & (probs <= 1))
    truth = np.array([[pair in examples.present_concepts(test[i]) for pair in pairs]
                      for i in range(len(test))])
    assert out["all_concepts_accuracy"] == pytest.approx(np.mean((probs > 0.5) == truth))
    assert out["present_recall"] == pytest.approx(np.mean(probs[truth] > 0.5))
    # both decisions occur, so the comparison checks the script's rule (logit > 0)
    assert 0 < np.mean(probs > 0.5) < 1
    np.testing.assert_array_equal(concepts.prompt_correct(presence, x, [(0, 0)], [(2, 3)]),
                                  (probs[:, 0] > 0.5) & (probs[:, 11] <= 0.5))


# ----------------------------------------------------------------------------- prompt_correct


def test_prompt_correct_truth_table():
    a, b, c = (0, 0), (1, 2), (2, 1)  # red cube, blue sphere, green cylinder
    states = list(itertools.product([False, True], repeat=3))  # image i: (a, b, c) present
    table = {examples.concept_vector(*k).tobytes(): np.array([0.9 if s[j] else 0.1
                                                             for s in states])
             for j, k in enumerate((a, b, c))}
    calls = []

    def presence(x, vectors):
        calls.append(1)
        assert np.all(vectors == vectors[:1])
        return table[vectors[0].astype(np.float32).tobytes()][x[:, 0].astype(int)]

    x = np.arange(8, dtype=np.float32)[:, None]  # image i is state i
    got = concepts.prompt_correct(presence, x, required=[a, b], forbidden=[c])
    np.testing.assert_array_equal(got, [sa and sb and not sc for sa, sb, sc in states])
    got = concepts.prompt_correct(presence, x, required=[a], any_of=[[b, c]])
    np.testing.assert_array_equal(got, [sa and (sb or sc) for sa, sb, sc in states])
    got = concepts.prompt_correct(presence, x, forbidden=[a, b], any_of=[[c], [a, b, c]])
    np.testing.assert_array_equal(got, [sc and not sa and not sb for sa, sb, sc in states])
    calls.clear()  # each distinct concept asked once, vectors given as they are
    got = concepts.prompt_correct(presence, x, required=[a, examples.concept_vector(*a)],
                                  any_of=[[a, b]])
    assert len(calls) == 2
    np.testing.assert_array_equal(got, [sa for sa, _, _ in states])
    np.testing.assert_array_equal(concepts.prompt_correct(presence, x), np.ones(8, bool))
    # the threshold: p > 0.5 is present, exactly 0.5 is absent
    half = np.array([[0.5], [0.500001]])
    np.testing.assert_array_equal(concepts.correct_from_probs(half, half[:, :0]), [False, True])
    np.testing.assert_array_equal(concepts.correct_from_probs(half[:, :0], half), [True, False])
    np.testing.assert_array_equal(concepts.correct_from_probs(half[:, :0], half[:, :0], [half]),
                                  [False, True])
    with pytest.raises(ValueError, match="at least one concept"):
        concepts.prompt_correct(presence, x, any_of=[[]])
    with pytest.raises(ValueError, match="one probability per image"):
        concepts.prompt_correct(lambda x, v: np.zeros((len(x), 1)), x, required=[a])


def test_multilabel_presence_reads_each_concepts_own_output():
    logits = np.linspace(-3, 3, 12, dtype=np.float32)

    class Net:  # a multi-label classifier whose logits are fixed: output k is logits[k]
        query = "none"

        def apply(self, variables, x, t):
            return jax.numpy.broadcast_to(logits, (x.shape[0], 12))

    presence = concepts.classifier_presence(Net(), {})
    pairs = list(itertools.product(range(3), range(4)))
    probs = concepts.presence_probs(presence, np.zeros((2, 5), np.float32), pairs)
    np.testing.assert_allclose(probs, np.broadcast_to(jax.nn.sigmoid(logits), (2, 12)),
                               rtol=1e-6)


def test_score_counts_every_requirement_and_the_fraction_met():
    # a judge that sees exactly a red cube (0, 0) and a green sphere (1, 1) in every image
    seen = {(0, 0), (1, 1)}

    def presence(images, vectors):
        from compdiff.data import examples
        return np.array([float(examples.concept_of(v) in seen) for v in vectors])

    x = np.zeros((3, 4, 4, 3))
    score = lambda p: concepts.score_prompt(presence, x, prompts.parse_prompt(p))  # noqa: E731
    assert score("a red cube AND a green sphere") == {"accuracy": 1.0, "concept_accuracy": 1.0}
    assert score("a red cube AND a blue sphere") == {"accuracy": 0.0, "concept_accuracy": 0.5}
    assert score("a red cube AND NOT a green sphere") == {"accuracy": 0.0,
                                                          "concept_accuracy": 0.5}
    assert score("a blue cube OR a green sphere") == {"accuracy": 1.0, "concept_accuracy": 1.0}
    assert score("a blue cube AND (a yellow cube OR a red cylinder)")["accuracy"] == 0.0
