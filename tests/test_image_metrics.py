"""Frechet distance, precision/recall, classifier features and the ADM npz layout."""

import jax
import numpy as np
import pytest

from compdiff import guidance
from compdiff.evaluation import image_metrics
from compdiff.models.classifier import ImageClassifier


def _gaussian_moments(rng, d):
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_of_gaussian_samples_matches_the_closed_form():
    """Samples of N(m1, S1), N(m2, S2) against the closed form from (m, S) by scipy's sqrtm."""
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    d, n = 4, 40_000
    (m1, s1), (m2, s2) = _gaussian_moments(rng, d), _gaussian_moments(rng, d)
    want = float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2))))
    assert image_metrics.frechet_from_moments(m1, s1, m2, s2) == pytest.approx(want, rel=1e-6)
    a = rng.multivariate_normal(m1, s1, n)
    b = rng.multivariate_normal(m2, s2, n)
    # The sample estimate carries O(d / sqrt(n)) noise in each moment: 2% of ~5 here.
    assert image_metrics.frechet_distance(a, b) == pytest.approx(want, rel=0.02)
    assert image_metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # One-dimensional: (m1 - m2)^2 + (s1 - s2)^2 in standard deviations.
    x, y = rng.normal(1.0, 2.0, (n, 1)), rng.normal(-1.0, 0.5, (n, 1))
    assert image_metrics.frechet_distance(x, y) == pytest.approx(4.0 + 1.5**2, rel=0.02)


def test_frechet_distance_handles_rank_deficient_covariances():
    """Fewer samples than dimensions (singular S): real, finite, zero against itself."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(5, 20)) + 1.0
    assert image_metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert np.isfinite(image_metrics.frechet_distance(a, b))
    with pytest.raises(ValueError, match="dimension"):
        image_metrics.frechet_distance(a, b[:, :3])


def test_precision_recall_on_hand_made_point_sets():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(200, 3))
    assert image_metrics.precision_recall(real, real.copy()) == (1.0, 1.0)
    assert image_metrics.precision_recall(real, real + 100.0) == (0.0, 0.0)
    # Real: x = 0..9 on a line. Generated: x = 0..4 on it and the same five 50 away.
    # Precision: the five on the line sit on real points, the far five in no ball.
    # Recall: generated balls (3rd nearest other generated point) have radius 3 at
    # x = 0 and x = 4 and 2 between, so they cover real x in [-3, 7]: 8 of 10.
    line = np.arange(10.0)[:, None] * np.array([[1.0, 0.0]])
    gen = np.concatenate([line[:5], line[:5] + [[0.0, 50.0]]])
    precision, recall = image_metrics.precision_recall(line, gen)
    assert precision == 0.5
    assert recall == pytest.approx(0.8)
    with pytest.raises(ValueError, match="k must be"):
        image_metrics.precision_recall(real[:3], real[:3])


def test_classifier_features_are_the_penultimate_layer_with_the_same_params():
    net = ImageClassifier(image_shape=(4, 4, 1), num_outputs=3, channels=4, channel_mult=(1,),
                          num_groups=2)
    x = jax.random.normal(jax.random.key(0), (5, 16))
    params = net.init(jax.random.key(1), x)["params"]
    feats = image_metrics.classifier_features(net, params, np.asarray(x), batch_size=2)
    assert feats.shape == (5, 16)
    # The head is Dense_0, the name it had before features= existed (old checkpoints restore).
    last = params["Dense_0"]
    assert last["kernel"].shape == (16, 3)
    np.testing.assert_allclose(feats @ np.asarray(last["kernel"]) + np.asarray(last["bias"]),
                               net.apply({"params": params}, x), rtol=1e-5, atol=1e-5)
    clf = guidance.Classifier.from_module(net, params, name="digits-clean")
    assert clf.log_probs(x).shape == (5, 3) and not clf.noise_conditional
    got = image_metrics.feature_metrics(feats, feats, clf.name)
    assert got["feature_space"] == "Frechet distance in digits-clean features"
    assert got["precision"] == got["recall"] == 1.0
    assert got["frechet"] == pytest.approx(0.0, abs=1e-6)


def test_adm_npz_round_trip_layout_and_errors(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    path = image_metrics.write_adm_npz(str(tmp_path / "samples.npz"), rgb, labels=np.arange(6))
    with np.load(path) as raw:  # the layout the ADM evaluator reads
        assert sorted(raw.files) == ["arr_0", "arr_1"]
        assert raw["arr_0"].dtype == np.uint8 and raw["arr_0"].shape == (6, 8, 8, 3)
    images, labels = image_metrics.read_adm_npz(path)
    np.testing.assert_array_equal(images, rgb)
    np.testing.assert_array_equal(labels, np.arange(6))
    grey = rng.integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    images, labels = image_metrics.read_adm_npz(
        image_metrics.write_adm_npz(str(tmp_path / "grey.npz"), grey))
    assert images.shape == (2, 8, 8, 3) and labels is None
    np.testing.assert_array_equal(images[..., 2], grey[..., 0])
    with pytest.raises(ValueError, match="uint8"):
        image_metrics.write_adm_npz(str(tmp_path / "f.npz"), rgb.astype(np.float32))
    with pytest.raises(ValueError, match="NHWC"):
        image_metrics.write_adm_npz(str(tmp_path / "f.npz"), rgb[..., :2])
    np.savez(tmp_path / "other.npz", images=rgb)
    with pytest.raises(ValueError, match="no arr_0"):
        image_metrics.read_adm_npz(str(tmp_path / "other.npz"))
