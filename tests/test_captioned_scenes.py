"""captioned_scenes: the tfds builder of captioned scenes, its caption vocabulary, image_caption."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from compdiff.data import captioned_scenes as cs
from compdiff.data import examples, images, render

CONFIGS = {c.name: c for c in cs.CaptionedScenes.BUILDER_CONFIGS}
NUM = {"train": 240, "test": 48}  # the tiny config
# an independent reading of a caption: "[template ][size ]colour shape[ side]"
CAPTION = re.compile(r"^(?:a |there is a |a picture of a )?(?:(small|large) )?"
                     r"(red|green|blue|yellow) (cube|sphere|cylinder)"
                     r"(?: (?:on the |in the )(left|centre|right))?$")


def _parse(text: str) -> tuple[str | None, str, str, str | None]:
    """(size, colour, shape, side) of a caption, None where it says nothing."""
    match = CAPTION.match(text)
    assert match, f"caption {text!r} has an unknown form"
    size, colour, shape, side = match.groups()
    return size, colour, shape, side


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    cs.prepare("tiny", str(path))
    return str(path)


@pytest.fixture(scope="module")
def records(data_dir):
    """Every record of both ``tiny`` splits, read through ``data_source``."""
    out = {}
    for split in ("train", "test"):
        src = cs.data_source("tiny", split, data_dir)
        assert len(src) == NUM[split]
        out[split] = [src[i] for i in range(len(src))]
    return out


def _objects(record):
    """(shape, colour, size, side, caption_id, position) of each object, names for attributes."""
    n = int(record["count"])
    return [(cs.SHAPES[record["shape"][k]], cs.COLOURS[record["colour"][k]],
             cs.SIZES[record["size"][k]], cs.SIDES[record["side"][k]],
             int(record["caption_id"][k]), record["positions"][k]) for k in range(n)]


def test_vocabulary_is_finite_unique_and_invertible():
    vocab = cs.caption_vocabulary()
    assert len(vocab) == cs.NUM_CAPTIONS == 576 and len(set(vocab)) == len(vocab)
    assert vocab[0] == "a red cube"
    assert cs.caption_text(cs.caption_id(1, 2, 0, 2, 2)) == \
        "there is a small blue sphere on the right"
    assert cs.caption_text(cs.caption_id(2, 3, 1, 0, 1)) == "large yellow cylinder on the left"
    assert cs.caption_text(cs.caption_id(0, 1, -1, 1, 3)) == \
        "a picture of a green cube in the centre"
    for cid, text in enumerate(vocab):
        parts = cs.caption_parts(cid)
        assert cs.caption_id(*parts) == cid and cs.caption_index(text) == cid
        size, colour, shape, side = _parse(text)
        assert (shape, colour) == (cs.SHAPES[parts.shape], cs.COLOURS[parts.colour])
        assert size == (cs.SIZES[parts.size] if parts.size >= 0 else None)
        assert side == (cs.SIDES[parts.side] if parts.side >= 0 else None)
    # every held-out pair can be prompted
    for shape, colour in cs.HELD_OUT:
        assert cs.caption_index(f"a {colour} {shape}") >= 0
    # 16 phrasings per object: 4 templates x (size said or not) x (side said or not)
    ids = cs.object_caption_ids(0, 0, 1, 2)
    assert len(set(ids)) == 16 and {_parse(vocab[i])[1:3] for i in ids} == {("red", "cube")}
    with pytest.raises(ValueError, match="not a caption"):
        cs.caption_index("a purple cube")
    with pytest.raises(ValueError, match="out of range"):
        cs.caption_id(3, 0)
    with pytest.raises(ValueError, match="outside"):
        cs.caption_parts(cs.NUM_CAPTIONS)


def test_side_thresholds():
    np.testing.assert_array_equal(cs.side_of(np.array([0.0, 0.33, 1 / 3, 0.66, 2 / 3, 1.0])),
                                  [0, 0, 1, 1, 2, 2])
    assert cs.side_of(0.5) == 1 and isinstance(cs.side_of(0.5), int)


def test_records_fields_counts_and_padding(records):
    counts = []
    for split, recs in records.items():
        for r in recs:
            assert r["image"].shape == (16, 16, 3) and r["image"].dtype == np.uint8
            n = int(r["count"])
            assert 1 <= n <= cs.MAX_OBJECTS
            counts.append(n)
            for key in ("shape", "colour", "size", "side", "caption_id"):
                assert r[key].shape == (cs.MAX_OBJECTS,) and r[key].dtype == np.int32
                assert np.all(r[key][:n] >= 0) and np.all(r[key][n:] == -1), (split, key)
            assert r["positions"].shape == (cs.MAX_OBJECTS, 2)
            assert r["positions"].dtype == np.float32
            assert np.all(r["positions"][n:] == 0)
            assert np.all((r["positions"][:n] > 0) & (r["positions"][:n] < 1))
            assert np.all(r["shape"][:n] < 3) and np.all(r["colour"][:n] < 4)
            assert np.all(r["size"][:n] < 2)
    # every count occurs, about equally often
    assert sorted(set(counts)) == [1, 2, 3] and min(np.bincount(counts)[1:]) > len(counts) / 5
    assert "tensorflow" not in sys.modules


def test_held_out_pairs_absent_from_train_present_in_test(records):
    pairs = {split: [(o[0], o[1]) for r in recs for o in _objects(r)]
             for split, recs in records.items()}
    held = set(cs.HELD_OUT)
    assert len(held) == 3 and CONFIGS["tiny"].held_out == cs.HELD_OUT
    assert not held & set(pairs["train"])
    assert set(pairs["train"]) == {(s, c) for s in cs.SHAPES for c in cs.COLOURS} - held
    assert held <= set(pairs["test"])
    # every shape and colour still appears in train, pairs roughly balanced
    counts = np.array([pairs["train"].count(p) for p in set(pairs["train"])])
    assert counts.min() > counts.mean() / 2
    # the _all config keeps every pair in train; its test split is the same images
    every = CONFIGS["tiny_all"]
    assert every.held_out == () and all(len(c) == 4 for c in every.colours("train"))
    for i in (0, 7):
        np.testing.assert_array_equal(cs.make_example(every, "test", i)["image"],
                                      records["test"][i]["image"])


def test_captions_describe_their_objects(records):
    vocab = cs.caption_vocabulary()
    templates, said_size, said_side = set(), [], []
    for recs in records.values():
        for r in recs:
            for shape, colour, size, side, cid, position in _objects(r):
                assert 0 <= cid < cs.NUM_CAPTIONS
                said = _parse(vocab[cid])
                assert said[1:3] == (colour, shape)
                assert said[0] in (None, size)
                assert said[3] in (None, side)
                # the side of an object is that of its image-plane u
                u = float(position[0])
                assert side == ("left" if u < 1 / 3 else "centre" if u < 2 / 3 else "right")
                templates.add(cs.caption_parts(cid).template)
                said_size.append(said[0] is not None)
                said_side.append(said[3] is not None)
    # phrasings vary: every template, size and side each said about half the time
    assert templates == set(range(len(cs.TEMPLATES)))
    assert 0.35 < np.mean(said_size) < 0.65 and 0.35 < np.mean(said_side) < 0.65
    # all three sides occur
    sides = {o[3] for recs in records.values() for r in recs for o in _objects(r)}
    assert sides == set(cs.SIDES)


def test_rendered_colour_is_the_labelled_one(records):
    """Lone large objects: the pixel at the centre has the hue of the labelled colour."""
    albedo = np.array([render.COLORS[c] for c in cs.COLOURS])
    albedo /= np.linalg.norm(albedo, axis=1, keepdims=True)
    checked = 0
    for recs in records.values():
        for r in recs:
            if int(r["count"]) != 1 or cs.SIZES[r["size"][0]] != "large":
                continue
            u, v = r["positions"][0]
            pixel = r["image"][int(v * 16), int(u * 16)].astype(float)
            assert np.argmax(albedo @ (pixel / np.linalg.norm(pixel))) == r["colour"][0]
            checked += 1
    assert checked >= 20


def test_deterministic(records):
    cfg = CONFIGS["tiny"]
    for split, i in (("train", 0), ("train", 239), ("test", 13)):
        fresh = cs.make_example(cfg, split, i)
        again = cs.make_example(cfg, split, i)
        assert set(fresh) == set(records[split][i])
        for key, value in fresh.items():
            np.testing.assert_array_equal(records[split][i][key], value)
            np.testing.assert_array_equal(again[key], value)
    assert not np.array_equal(cs.make_example(cfg, "train", 1)["image"],
                              records["train"][0]["image"])
    # train and test of the same index are different scenes (split id in the seed)
    assert not any(np.array_equal(records["test"][i]["positions"],
                                  records["train"][i]["positions"]) for i in range(3))


def test_image_caption_example(records):
    vocab = cs.caption_vocabulary()
    rng = np.random.default_rng(0)
    fn = examples.get("image_caption")
    stored = examples.get("image_caption:phrasing=stored")
    drawn = set()
    for r in records["train"][:60]:
        objects = _objects(r)
        for _ in range(5):
            out = fn(r, rng)
            assert set(out) == {"x", "caption_id"}
            assert out["x"].shape == (16 * 16 * 3,) and out["x"].dtype == np.float32
            assert out["x"].min() >= -1 and out["x"].max() <= 1
            np.testing.assert_array_equal(out["x"], images.to_unit_range(r["image"]))
            assert out["caption_id"].shape == () and out["caption_id"].dtype == np.int32
            cid = int(out["caption_id"])
            assert 0 <= cid < cs.NUM_CAPTIONS
            # it describes one of the image's objects
            assert any(cid in cs.object_caption_ids(
                cs.SHAPES.index(o[0]), cs.COLOURS.index(o[1]), cs.SIZES.index(o[2]),
                cs.SIDES.index(o[3])) for o in objects), vocab[cid]
            drawn.add(cid)
            kept = stored(r, rng)
            assert int(kept["caption_id"]) in [o[4] for o in objects]
    # random phrasings: many more distinct captions than stored ones
    assert len(drawn) > 100
    # every object of a 3-object scene gets picked
    three = next(r for r in records["train"] if int(r["count"]) == 3)
    picked = {int(stored(three, rng)["caption_id"]) for _ in range(60)}
    assert picked == set(int(c) for c in three["caption_id"])
    with pytest.raises(ValueError, match="phrasing"):
        examples.get("image_caption:phrasing=fixed")(three, rng)


def test_registered_and_bad_inputs(tmp_path):
    assert images.BUILDERS["captioned_scenes"] == cs.__name__
    assert cs.config_names() == ["tiny", "tiny_all", "32px", "32px_all", "32px_large",
                                 "32px_large_all", "64px", "64px_all"]
    assert (CONFIGS["32px"].resolution, CONFIGS["32px"].num_train,
            CONFIGS["32px"].num_test) == (32, 20_000, 1_000)
    assert CONFIGS["64px"].resolution == 64
    with pytest.raises(ValueError, match="unknown captioned_scenes config"):
        cs.prepare("128px", str(tmp_path))
    with pytest.raises(ValueError, match="split"):
        cs.data_source("tiny", "validation", str(tmp_path))


def test_large_configs_draw_only_large_objects_and_the_others_both():
    configs = {c.name: c for c in cs.CaptionedScenes.BUILDER_CONFIGS}
    large = cs.SIZES.index("large")
    for name, sizes in (("32px_large", {large}), ("32px_large_all", {large}),
                        ("32px", {0, 1})):
        drawn = set()
        for i in range(60):
            ex = cs.make_example(configs[name], "train", i)
            drawn |= set(ex["size"][:ex["count"]].tolist())
        assert drawn == sizes, name
