"""The noise-image detector: no image of the datasets is noise, and noise always is."""

from __future__ import annotations

import numpy as np
import pytest

from compdiff.data import clevr_positions, digits
from compdiff.evaluation import noise_images


@pytest.fixture(scope="module")
def dataset_images(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data"))
    clevr_positions.prepare("tiny", path)
    digits.prepare("16px", path)
    out = {}
    for name, source in (("clevr", clevr_positions.data_source("tiny", "train", path)),
                         ("digits", digits.data_source("16px", "train", path))):
        out[name] = np.stack([np.asarray(source[i]["image"]) for i in range(200)])
    return out


def test_dataset_images_are_never_noise(dataset_images):
    for name, images in dataset_images.items():
        r = noise_images.spatial_autocorrelation(images)
        # a margin above the threshold: the least correlated real images sit near 0.33
        assert r.min() > noise_images.NOISE_THRESHOLD + 0.05, (name, r.min())
        assert noise_images.count(images) == 0


@pytest.mark.parametrize("scale", [0.05, 0.3, 1.0, 10.0])
def test_pixel_noise_is_noise_at_any_scale_and_after_clipping(scale):
    rng = np.random.default_rng(0)
    noise = np.clip(0.5 + scale * rng.normal(size=(100, 16, 16, 3)), 0.0, 1.0)
    assert noise_images.is_noise(noise).all()
    assert noise_images.count((noise * 255).astype(np.uint8)) == 100


def test_noise_over_an_image_counts_when_it_dominates(dataset_images):
    rng = np.random.default_rng(1)
    x = dataset_images["clevr"].astype(np.float64) / 255.0
    light = np.clip(x + 0.02 * rng.normal(size=x.shape), 0, 1)
    heavy = np.clip(x + 1.0 * rng.normal(size=x.shape), 0, 1)
    assert not noise_images.is_noise(light).any()  # 5 of 255 grey levels
    assert noise_images.is_noise(heavy).mean() > 0.95


def test_constant_and_smooth_images_are_not_noise_and_shapes_are_checked():
    ramp = np.broadcast_to(np.linspace(0, 1, 16)[None, :, None, None], (2, 16, 16, 3))
    flat = np.full((1, 8, 8, 1), 7, np.uint8)
    assert noise_images.spatial_autocorrelation(ramp) == pytest.approx([1, 1], abs=0.2)
    assert noise_images.spatial_autocorrelation(flat) == pytest.approx([1.0])
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        noise_images.is_noise(np.zeros((16, 16, 3)))
