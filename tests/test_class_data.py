"""Class-labelled image datasets (digits, scene_classes, ImageNet on mock data), configs."""

from __future__ import annotations

import functools
import importlib.util
import io
import pathlib
import sys

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

from compdiff import train
from compdiff.data import digits, examples, imagenet, images
from compdiff.data import scene_classes as sc
from compdiff.models.loading import load_params
from compdiff.training import tasks
from configs.models import classifier, guidance_models


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    digits.prepare("16px", str(path))
    sc.prepare("tiny", str(path))
    return str(path)


# ----------------------------------------------------------------------------- digits


def test_digits_pixels_labels_and_fixed_stratified_split(data_dir, tmp_path):
    ref = load_digits()
    sources = {s: digits.data_source("16px", s, data_dir) for s in ("train", "test")}
    assert (len(sources["train"]), len(sources["test"])) == (1500, 297)
    rows = {}
    for split, src in sources.items():
        idx = np.array([int(src[i]["index"]) for i in range(len(src))])
        rows[split] = idx
        for i in range(0, len(src), 37):
            r = src[i]
            assert r["image"].dtype == np.uint8 and r["image"].shape == (16, 16, 1)
            assert int(r["label"]) == ref.target[r["index"]]
            scan = ref.images[r["index"]]  # grey levels 0..16
            # nearest: each 2x2 block is one grey level of the scan, scaled to 0..255
            expected = np.kron(np.round(scan * 255 / 16), np.ones((2, 2)))
            np.testing.assert_array_equal(r["image"][..., 0], expected)
    # disjoint, complete, stratified (29 or 30 held out per digit)
    assert not set(rows["train"]) & set(rows["test"])
    assert sorted(np.concatenate([rows["train"], rows["test"]])) == list(range(1797))
    held = np.bincount(ref.target[rows["test"]], minlength=10)
    assert held.min() >= 29 and held.max() <= 30
    # fixed: a second build elsewhere holds out the same scans with the same pixels
    other = digits.data_source("16px", "test", str(tmp_path))
    np.testing.assert_array_equal([int(other[i]["index"]) for i in range(297)], rows["test"])
    np.testing.assert_array_equal(other[5]["image"], sources["test"][5]["image"])
    np.testing.assert_array_equal(rows["test"], digits.split_indices(ref.target)["test"])
    assert "tensorflow" not in sys.modules


def test_digits_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown digits config '64px'"):
        digits.prepare("64px", str(tmp_path))
    with pytest.raises(ValueError, match="split"):
        digits.data_source("16px", "validation", str(tmp_path))
    with pytest.raises(ValueError, match="multiple of 8"):
        digits.upsample(np.zeros((8, 8)), 12)


# ----------------------------------------------------------------------------- scenes


def _hue(image: np.ndarray, position: np.ndarray) -> str:
    """The colour name at the object's centre, by which channels dominate."""
    res = image.shape[0]
    r, c = int(position[1] * res), int(position[0] * res)
    patch = image[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].reshape(-1, 3).astype(float)
    red, green, blue = patch.mean(0)
    if blue > red + 40 and blue > green + 20:
        return "blue"
    if red > blue + 60 and green > blue + 60:
        return "yellow"
    if red > green + 40 and red > blue + 40:
        return "red"
    if green > red + 20 and green > blue + 20:
        return "green"
    return "?"


def test_scene_classes_labels_held_out_pairs_and_determinism(data_dir, tmp_path):
    held = {sc.class_label(s, c) for s, c in sc.HELD_OUT}
    assert len(held) == 3 and sc.NUM_CLASSES == 12
    cfg = sc.SceneClasses.BUILDER_CONFIGS[0]
    assert cfg.name == "tiny" and cfg.held_out == sc.HELD_OUT
    seen = {}
    for split, size in (("train", 108), ("test", 48)):
        src = sc.data_source("tiny", split, data_dir)
        assert len(src) == size
        labels = []
        for i in range(size):
            r = src[i]
            label, shape, colour = int(r["label"]), int(r["shape"]), int(r["colour"])
            assert label == shape * len(sc.COLOURS) + colour
            assert sc.class_name(label) == (sc.SHAPES[shape], sc.COLOURS[colour])
            assert r["image"].shape == (16, 16, 3) and r["image"].dtype == np.uint8
            # the rendered object has the labelled colour
            assert _hue(r["image"], r["position"]) == sc.COLOURS[colour], (split, i)
            labels.append(label)
        seen[split] = np.bincount(labels, minlength=12)
    # train: the 9 kept pairs, balanced; test: all 12, balanced
    assert all(seen["train"][k] == 0 for k in held)
    assert sorted(set(seen["train"])) == [0, 108 // 9]
    assert np.all(seen["test"] == 48 // 12)
    # the _all config keeps every pair in train; its test split is the same images
    every = sc.SceneClasses.BUILDER_CONFIGS[1]
    assert every.name == "tiny_all" and every.pairs("train") == list(range(12))
    np.testing.assert_array_equal(sc.make_example(every, "test", 7)["image"],
                                  sc.data_source("tiny", "test", data_dir)[7]["image"])
    # deterministic: a fresh render equals the stored record
    src = sc.data_source("tiny", "train", data_dir)
    for i in (0, 13, 107):
        fresh = sc.make_example(cfg, "train", i)
        for key, value in fresh.items():
            np.testing.assert_array_equal(src[i][key], value)
    assert "tensorflow" not in sys.modules


def test_scene_classes_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown class"):
        sc.class_label("cone", "red")
    with pytest.raises(ValueError, match="unknown scene_classes config"):
        sc.prepare("64px", str(tmp_path))
    with pytest.raises(ValueError, match="split"):
        sc.data_source("tiny", "validation", str(tmp_path))


# ----------------------------------------------------------------------------- imagenet


@pytest.mark.parametrize("config_name", ["resized32", "2012_64"])
def test_imagenet_reader_on_mock_data(config_name, tmp_path):
    resolution = imagenet.CONFIGS[config_name][1]
    with tfds.testing.mock_data(num_examples=6):
        for split in ("train", "test"):
            src = imagenet.data_source(config_name, split, str(tmp_path))
            assert len(src) == 6
            r = src[3]
            assert r["image"].shape == (resolution, resolution, 3)
            assert r["image"].dtype == np.uint8 and 0 <= int(r["label"]) < 1000
        data = ml_collections.ConfigDict({"source": "imagenet", "builder_config": config_name,
                                          "data_dir": str(tmp_path),
                                          "example": "image_class:num_classes=1000"})
        source = images.ImageSource.from_config(data)
        assert source.image_shape == (resolution, resolution, 3) and source.cond_dim == 1000
        batch = source.batches(4, seed=0).get(0)
        assert batch["x"].shape == (4, resolution * resolution * 3)
        np.testing.assert_array_equal(batch["cond"].sum(-1), np.ones(4))
    assert "tensorflow" not in sys.modules


def test_imagenet_center_crop_and_numpy_decoding():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 100, 3), dtype=np.uint8)
    # shorter side already R: no resampling, the central R x R
    np.testing.assert_array_equal(imagenet.center_crop(img, 64), img[:, 18:82])
    # larger: box-halved then bicubic; a flat image stays flat, aspect kept, grey -> RGB
    flat = imagenet.center_crop(np.full((300, 500), 77, np.uint8), 64)
    assert flat.shape == (64, 64, 3) and np.all(flat == 77)
    # the middle of a 2-colour image (left half dark, right bright) stays centred
    halves = np.zeros((256, 512, 3), np.uint8)
    halves[:, 256:] = 255
    out = imagenet.center_crop(halves, 32).astype(int)
    assert out[:, :12].max() < 40 and out[:, -12:].min() > 215
    # imagenet2012 stores encoded images; tfds decodes them with PIL, no TensorFlow
    feature = tfds.builder("imagenet2012", file_format="array_record").info.features["image"]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    np.testing.assert_array_equal(feature.decode_example_np(buf.getvalue()), img)
    with pytest.raises(ValueError, match="unknown imagenet config"):
        imagenet.data_source("2012_512", "train", "/nonexistent")
    assert "tensorflow" not in sys.modules


# ----------------------------------------------------------------------------- examples


def test_example_functions():
    record = {"image": np.full((2, 2, 1), 255, np.uint8), "label": np.int32(3),
              "shape": np.int32(2), "colour": np.int32(1)}
    rng = np.random.default_rng(0)
    out = examples.get("image_class:num_classes=10")(record, rng)
    np.testing.assert_array_equal(out["cond"], np.eye(10, dtype=np.float32)[3])
    np.testing.assert_array_equal(out["x"], np.ones(4, np.float32))
    assert int(examples.get("class_label")(record, rng)["label"]) == 3
    assert int(examples.get("shape_label")(record, rng)["label"]) == 2
    rgb = {"image": np.array([[[10, 20, 30]]], np.uint8), "shape": np.int32(0),
           "colour": np.int32(0)}
    orders = {tuple(examples.get("shape_label")(rgb, rng)["x"]) for _ in range(40)}
    assert len(orders) == 6  # every channel order (colour is no shape cue)
    np.testing.assert_allclose(examples.get("colour_label")(rgb, rng)["x"],
                               np.array([10, 20, 30]) / 127.5 - 1, rtol=1e-6)
    assert int(examples.get("class_label:key=colour")(record, rng)["label"]) == 1
    np.testing.assert_array_equal(examples.get("image_colour_class")(record, rng)["cond"],
                                  [0, 1, 0, 0])
    with pytest.raises(ValueError, match="num_classes"):
        examples.get("image_class")(record, rng)
    with pytest.raises(ValueError, match="outside 0..1"):
        examples.get("image_class:num_classes=2")(record, rng)
    with pytest.raises(ValueError, match="takes no argument 'classes'"):
        examples.get("image_class:classes=10")
    with pytest.raises(ValueError, match="key=value"):
        examples.get("image_class:10")


# ----------------------------------------------------------------------------- configs


def test_configs_load_and_check_variants():
    for arg in ("digits", "scenes", "imagenet", "digits,noisy=True", "scenes,attribute=shape",
                "scenes,noisy=True,attribute=colour", "scenes,tiny"):
        c = classifier.get_config(arg)
        assert c.task == "classifier" and c.model.network == "classifier"
        assert c.data.source in images.BUILDERS
        examples.get(c.data.example)
    assert classifier.get_config("scenes").data.builder_config == "32px_all"
    assert classifier.get_config("scenes,attribute=shape").data.builder_config == "32px"
    assert classifier.get_config("scenes,attribute=colour").model.num_outputs == 4
    assert classifier.get_config("digits,noisy=True").schedule.num_levels == \
        guidance_models.get_config("digits").schedule.num_levels
    for arg in ("digits", "scenes,param=eps", "imagenet,conditional=True", "paper", "tiny"):
        c = guidance_models.get_config(arg)
        assert c.model.network == "unet" and c.data.source in images.BUILDERS
        examples.get(c.data.example)
    paper = guidance_models.get_config("paper")
    assert (paper.data.builder_config, paper.model.channels, tuple(paper.model.channel_mult),
            paper.model.num_res_blocks, paper.schedule.num_levels) == (
        "2012_128", 128, (1, 1, 2, 3, 4), 2, 1000)
    cond = guidance_models.get_config("scenes,conditional=True")
    assert cond.model.cond_dim == 12 and cond.train.cond_dropout == 0.1
    for bad, match in (("", "names no dataset"), ("digits,attribute=shape", "scenes only"),
                       ("mnist", "bad config variant"), ("imagenet,tiny", "no tiny")):
        with pytest.raises(ValueError, match=match):
            classifier.get_config(bad)
    with pytest.raises(ValueError, match="bad config variant"):
        guidance_models.get_config("digits,conditional=yes")


@functools.cache  # loaded once: the script defines absl flags
def _accuracy_script():
    spec = importlib.util.spec_from_file_location(
        "classifier_accuracy", pathlib.Path(__file__).parent.parent / "scripts" /
        "classifier_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("arg", ["digits,tiny", "scenes,tiny,noisy=True,attribute=shape"])
def test_classifier_trains_two_steps(arg, data_dir, tmp_path):
    config = classifier.get_config(arg)
    config.data.data_dir = data_dir
    state = train.train(config, str(tmp_path / "run"))
    assert int(state.step) == 2
    assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree.leaves(state.params))
    _, network, params = load_params(str(tmp_path / "run"))
    test = images.ImageSource.from_config(config.data, "test")
    x = test.example_fn(test.source[0], np.random.default_rng(0))["x"]
    t = np.ones(1, np.int32) if config.model.noise_conditional else None
    logits = network.apply({"params": params}, x[None], t)
    assert logits.shape == (1, config.model.num_outputs)
    # scripts/classifier_accuracy.py on the whole test split (at a noise level if noisy)
    level = 3 if config.model.noise_conditional else 0
    out = _accuracy_script().accuracy(str(tmp_path / "run"), "test", level)
    assert out["num"] == len(test.source) and 0.0 <= out["accuracy"] <= 1.0
    assert ("held_out_accuracy" in out) == (config.data.source == "scene_classes")


def test_class_conditional_data_resolves_the_condition_length(data_dir):
    config = guidance_models.get_config("tiny,conditional=True")
    config.data.data_dir = data_dir
    data = images.ImageSource.from_config(config.data)
    assert data.image_shape == (16, 16, 1) and data.cond_dim == 10
    resolved = tasks.resolve_config(config, data)
    assert resolved.model.cond_dim == 10 and list(resolved.model.image_shape) == [16, 16, 1]
    batch = data.batches(8, seed=0).get(0)
    np.testing.assert_array_equal(batch["cond"].sum(-1), np.ones(8))
