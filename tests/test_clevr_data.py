"""The CLEVR-like renderer and the ``clevr_positions`` tfds builder (no TensorFlow)."""

import dataclasses
import sys

import numpy as np
import pytest

from compdiff.data import clevr_positions as cp
from compdiff.data import render

YELLOW = list(render.COLORS).index("yellow")
GRAY = list(render.COLORS).index("gray")


def _scenes(num, seed, shapes=render.SHAPES, counts=(1, 6)):
    rng = np.random.default_rng(seed)
    return [render.sample_scene(rng, int(rng.integers(*counts)), shapes) for _ in range(num)]


def _far_mask(scene, res, pad=1.0):
    """Pixels whose centre is more than ``pad`` px outside every object's image box."""
    c = (np.arange(res) + 0.5) / res
    u, v = np.meshgrid(c, c, indexing="xy")
    far = np.ones((res, res), dtype=bool)
    for umin, vmin, umax, vmax in render.object_bounds_uv(scene):
        p = pad / res
        far &= ~((u >= umin - p) & (u <= umax + p) & (v >= vmin - p) & (v <= vmax + p))
    return far


# ----------------------------------------------------------------------------- builder


def test_tiny_builder_splits_features_determinism_and_no_tensorflow(tmp_path):
    a = cp.prepare("tiny", str(tmp_path / "a"))
    cp.prepare("tiny", str(tmp_path / "b"))
    cfg = a.builder_config
    assert (cfg.resolution, cfg.num_train, cfg.num_test) == (16, 256, 64)
    for split, size in (("train", 256), ("test", 64)):
        src_a = a.as_data_source(split=split)
        src_b = cp.data_source("tiny", split, str(tmp_path / "b"))  # reuses the build
        assert len(src_a) == len(src_b) == size
        counts = []
        for i in range(size if split == "test" else 48):
            ra, rb = src_a[i], src_b[i]
            assert ra["image"].dtype == np.uint8 and ra["image"].shape == (16, 16, 3)
            n = int(ra["count"])
            counts.append(n)
            assert 1 <= n <= 5
            assert ra["positions"].dtype == np.float32 and ra["positions"].shape == (n, 2)
            assert np.all((ra["positions"] >= 0) & (ra["positions"] <= 1))
            for key in ("shape", "color", "size"):
                assert ra[key].dtype == np.int32 and ra[key].shape == (n,)
            assert np.all(ra["shape"] == 0)  # cubes only
            # identical across two independent builds, and equal to a fresh render
            expected = cp.make_example(cfg, cp._SPLITS[split], i)
            for key in expected:
                np.testing.assert_array_equal(ra[key], rb[key])
                np.testing.assert_array_equal(ra[key], expected[key])
        assert len(set(counts)) >= 4  # the count varies over [1, 5]
    # the two splits differ (different seeds)
    assert not np.array_equal(a.as_data_source(split="train")[0]["image"],
                              a.as_data_source(split="test")[0]["image"])
    assert "tensorflow" not in sys.modules


def test_configs_and_unknown_config(tmp_path):
    by_name = {c.name: c for c in cp.ClevrPositions.BUILDER_CONFIGS}
    assert set(by_name) == {"tiny", "16px", "32px", "64px", "32px_shapes"}
    assert (by_name["32px"].resolution, by_name["32px"].num_train) == (32, 50_000)
    assert (by_name["64px"].resolution, by_name["64px"].num_train) == (64, 200_000)
    assert by_name["32px_shapes"].shapes == render.SHAPES
    with pytest.raises(ValueError, match="known: tiny, 16px"):
        cp.prepare("128px", str(tmp_path))
    with pytest.raises(ValueError, match="split"):
        cp.data_source("tiny", "validation", str(tmp_path))


# ----------------------------------------------------------------------------- renderer


def test_labels_match_rendered_pixels():
    res = 32
    shadow_pixels = 0
    for scene in _scenes(25, seed=1):
        empty = render.render(scene.select([]), res).astype(int)
        plain = render.render(scene, res, shadows=False).astype(int)
        shaded = render.render(scene, res).astype(int)
        # the pixel under every object's centre shows an object, not the floor
        for u, v in scene.centers:
            r, c = int(v * res), int(u * res)
            assert np.abs(plain[r, c] - empty[r, c]).max() > 20, (u, v)
        far = _far_mask(scene, res)
        assert far.sum() > res * res // 3
        np.testing.assert_array_equal(plain[far], empty[far])
        # with shadows, far pixels are the floor or darker than it (a shadow)
        assert np.all(shaded[far] <= empty[far])
        shadow_pixels += int(np.any(shaded[far] < empty[far] - 10, axis=-1).sum())
        # nothing touches the image border
        border = np.ones((res, res), dtype=bool)
        border[1:-1, 1:-1] = False
        np.testing.assert_array_equal(plain[border], empty[border])
    assert shadow_pixels > 0


@pytest.mark.parametrize("shape", render.SHAPES)
def test_single_object_centre_is_the_silhouette_centroid(shape):
    res = 32
    rng = np.random.default_rng(7)
    for _ in range(12):
        scene = render.sample_scene(rng, 1, (shape,))
        scene = dataclasses.replace(scene, color=np.array([YELLOW], np.int32))
        img = render.render(scene, res, supersample=3, shadows=False).astype(float)
        empty = render.render(scene.select([]), res, supersample=3, shadows=False)
        diff = np.abs(img - empty).max(axis=-1)
        w = np.clip(diff / 40.0, 0, 1)  # ~ coverage of the pixel by the object
        rows, cols = np.nonzero(w)
        cen = np.array([np.sum(w[rows, cols] * (cols + 0.5)),
                        np.sum(w[rows, cols] * (rows + 0.5))]) / w[rows, cols].sum()
        assert np.abs(cen - scene.centers[0] * res).max() < 1.5, (cen, scene.centers[0] * res)


def test_gray_objects_are_visible_on_the_gray_floor():
    rng = np.random.default_rng(3)
    for _ in range(10):
        scene = render.sample_scene(rng, 3, render.SHAPES)
        scene = dataclasses.replace(scene, color=np.full(3, GRAY, np.int32))
        plain = render.render(scene, 16, shadows=False).astype(int)
        empty = render.render(scene.select([]), 16).astype(int)
        for u, v in scene.centers:
            r, c = int(v * 16), int(u * 16)
            assert np.abs(plain[r, c] - empty[r, c]).max() > 20


def _in_footprint(points, shape, xy, half, rot):
    d = points - xy
    if render.SHAPES[shape] == "cube":
        cos, sin = np.cos(rot), np.sin(rot)
        lx, ly = cos * d[:, 0] + sin * d[:, 1], -sin * d[:, 0] + cos * d[:, 1]
        return (np.abs(lx) < half) & (np.abs(ly) < half)
    return np.sum(d * d, axis=1) < half * half


def test_objects_do_not_overlap_and_are_fully_in_view():
    halves = np.array(list(render.SIZES.values()))
    g = np.linspace(-1, 1, 15)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    for scene in _scenes(150, seed=2, counts=(4, 6)):
        bounds = render.object_bounds_uv(scene)
        assert np.all(bounds >= 0) and np.all(bounds <= 1)
        half = halves[scene.size]
        for i in range(scene.num_objects):
            pts = scene.floor_xy[i] + grid * half[i] * np.sqrt(2)
            pts = pts[_in_footprint(pts, scene.shape[i], scene.floor_xy[i], half[i],
                                    scene.rotation[i])]
            assert len(pts) > 20
            for j in range(scene.num_objects):
                if j != i:
                    assert not _in_footprint(pts, scene.shape[j], scene.floor_xy[j], half[j],
                                             scene.rotation[j]).any()


def test_sample_and_render_api():
    scene = render.sample_scene(np.random.default_rng(0), 4, ("cube", "sphere"))
    assert scene.shape.dtype == np.int32 and scene.shape.shape == (4,)
    assert set(scene.shape.tolist()) <= {0, 1}
    assert scene.floor_xy.dtype == np.float32 and scene.floor_xy.shape == (4, 2)
    assert scene.centers.dtype == np.float32 and scene.centers.shape == (4, 2)
    centre_3d = np.concatenate([scene.floor_xy, np.array(list(render.SIZES.values()))[
        scene.size][:, None]], axis=1)
    np.testing.assert_allclose(render.project(centre_3d), scene.centers, atol=1e-6)
    # (u, v): u grows to the right (+x), v grows downward (towards the camera, -y)
    uv = render.project(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, -1.0]]))
    assert uv[1, 0] > uv[0, 0] and uv[2, 1] > uv[0, 1]
    img = render.render(scene, 16)
    assert img.dtype == np.uint8 and img.shape == (16, 16, 3)
    np.testing.assert_array_equal(img, render.render(scene, 16))
    a = render.sample_scene(np.random.default_rng([5, 1]), 3)
    b = render.sample_scene(np.random.default_rng([5, 1]), 3)
    np.testing.assert_array_equal(a.centers, b.centers)


def test_bad_inputs():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="num_objects"):
        render.sample_scene(rng, 0)
    with pytest.raises(ValueError, match="too many"):
        render.sample_scene(rng, render.MAX_OBJECTS + 1)
    with pytest.raises(ValueError, match="unknown shape 'cone'"):
        render.sample_scene(rng, 2, ("cube", "cone"))
    with pytest.raises(ValueError, match="resolution"):
        render.render(render.sample_scene(rng, 1), 7)


# ----------------------------------------------------------------------------- npz reader


def test_load_composable_npz(tmp_path):
    rng = np.random.default_rng(0)
    ims = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    coords = rng.uniform(size=(3, 2)).astype(np.float32)
    path = tmp_path / "clevr_pos_data_128_30000.npz"
    np.savez(path, ims=ims, coords_labels=coords)
    out = cp.load_composable_npz(str(path))
    np.testing.assert_array_equal(out["images"], ims)
    assert out["positions"].dtype == np.float32 and out["positions"].shape == (3, 1, 2)
    np.testing.assert_allclose(out["positions"][:, 0, 0], coords[:, 0])
    np.testing.assert_allclose(out["positions"][:, 0, 1], 1 - coords[:, 1])  # y up -> v down
    # evaluation files hold several positions per image: [N, k, 2]
    multi = rng.uniform(size=(3, 4, 2))
    np.savez(tmp_path / "test.npz", ims=ims, coords_labels=multi)
    out = cp.load_composable_npz(str(tmp_path / "test.npz"))
    assert out["positions"].shape == (3, 4, 2)
    np.testing.assert_allclose(out["positions"][..., 1], 1 - multi[..., 1], rtol=1e-6)


def test_load_composable_npz_rejects_malformed_files(tmp_path):
    ims = np.zeros((2, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "a.npz", ims=ims, labels=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="missing array 'coords_labels'"):
        cp.load_composable_npz(str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", coords_labels=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="missing array 'ims'"):
        cp.load_composable_npz(str(tmp_path / "b.npz"))
    np.savez(tmp_path / "c.npz", ims=ims, coords_labels=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="coords_labels"):
        cp.load_composable_npz(str(tmp_path / "c.npz"))
