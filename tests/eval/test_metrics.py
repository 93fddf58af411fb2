"""Metrics, bundled classifier, grid and ONNX feature extractor (fast, CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tqdit_export.data import digits_split
from tqdit_export.eval import (
    DigitsFeatures,
    FeatureExtractor,
    OnnxFeatureExtractor,
    class_accuracy,
    class_mean_shift,
    class_spread,
    evaluate_digits,
    frechet_distance,
    frechet_terms,
    load_digits_classifier,
    paired_psnr,
    read_classifier_metadata,
    save_image_grid,
)
from tqdit_export.eval.classifier import DEFAULT_WEIGHTS

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def split():
    return digits_split()


@pytest.fixture(scope="module")
def clf():
    return load_digits_classifier()


# ------------------------------------------------------------------ Fréchet distance


def test_fd_of_set_with_itself_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 16))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
def test_fd_mean_shift_matches_gaussian_formula(shift):
    rng = np.random.default_rng(1)
    d, n = 8, 20000
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n, d)) + shift / np.sqrt(d)  # ||mu_a - mu_b||^2 = shift^2
    # identity covariances: FD = ||mu_a - mu_b||^2 (+ sampling noise in the covariance term)
    assert frechet_distance(a, b) == pytest.approx(shift**2, abs=0.02 + 0.02 * shift**2)


def test_fd_terms_separate_a_shift_from_a_wider_spread():
    rng = np.random.default_rng(3)
    d, n = 8, 20000
    a = rng.normal(size=(n, d))
    shifted = frechet_terms(rng.normal(size=(n, d)) + 1.0 / np.sqrt(d), a)
    wider = frechet_terms(2.0 * rng.normal(size=(n, d)), a)
    assert shifted["mean"] == pytest.approx(1.0, abs=0.05)
    assert shifted["trace_a"] == pytest.approx(d, rel=0.05)
    assert wider["mean"] == pytest.approx(0.0, abs=0.01)
    assert wider["trace_a"] == pytest.approx(4 * d, rel=0.05) and wider["trace_b"] == pytest.approx(d, rel=0.05)
    # a set and its double: Tr(4S + S - 2 (4 S^2)^(1/2)) = Tr S exactly
    assert frechet_distance(2.0 * a, a) == pytest.approx(np.trace(np.cov(a, rowvar=False)), rel=1e-4)
    t = frechet_terms(2.0 * a, a)
    assert t["mean"] + t["trace_a"] + t["trace_b"] - t["cross"] == pytest.approx(frechet_distance(2.0 * a, a))


def test_fd_singular_covariance_is_finite():
    rng = np.random.default_rng(2)
    a = np.zeros((30, 64))
    a[:, :5] = rng.normal(size=(30, 5))  # fewer samples than dims, dead features
    b = np.zeros((30, 64))
    b[:, :5] = rng.normal(size=(30, 5)) + 1.0
    fd = frechet_distance(a, b)
    assert np.isfinite(fd) and fd > 0


def test_fd_bad_inputs():
    a = np.zeros((10, 4))
    with pytest.raises(ValueError, match="2-D"):
        frechet_distance(np.zeros(10), a)
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(a, np.zeros((10, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 4)), a)
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.full((10, 4), np.nan), a)


# ------------------------------------------------------------------ classifier / accuracy


def test_committed_classifier_accuracy(split, clf):
    assert DEFAULT_WEIGHTS.stat().st_size < 1_000_000
    acc = class_accuracy(clf, split.heldout_images, split.heldout_labels)
    assert acc >= 0.95
    assert read_classifier_metadata()["heldout_accuracy"] == pytest.approx(acc, abs=1e-4)


def test_missing_weights_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_classifier"):
        load_digits_classifier(tmp_path / "nope.safetensors")


def test_digits_features_shape(split):
    f = DigitsFeatures()
    assert isinstance(f, FeatureExtractor)
    out = f(split.heldout_images[:7])
    assert out.shape == (7, 64) and np.isfinite(out).all()


def _clusters(rng, centres: np.ndarray, sigma: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(len(centres)), n)
    return centres[y] + sigma * rng.normal(size=(len(y), centres.shape[1])), y


def test_class_spread_tells_narrower_classes_from_classes_further_apart():
    rng = np.random.default_rng(4)
    d, k, n = 6, 5, 4000
    centres = rng.normal(size=(k, d))
    base = class_spread(*_clusters(rng, centres, 0.5, n))
    # within: d * sigma^2 per class; between: mean squared distance of the centres from their mean
    assert base["within"] == pytest.approx(d * 0.25, rel=0.05)
    assert base["between"] == pytest.approx(((centres - centres.mean(0)) ** 2).sum(1).mean(), rel=0.02)
    narrow = class_spread(*_clusters(rng, centres, 0.25, n))  # what guidance does to each class
    apart = class_spread(*_clusters(rng, 1.5 * centres, 0.5, n))  # ...and to the classes' distances
    assert narrow["within"] == pytest.approx(base["within"] / 4, rel=0.05)
    assert narrow["between"] == pytest.approx(base["between"], rel=0.02)
    assert apart["within"] == pytest.approx(base["within"], rel=0.05)
    assert apart["between"] == pytest.approx(2.25 * base["between"], rel=0.02)


def test_class_mean_shift_compares_shared_classes_only():
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(3, 4))
    a, ya = _clusters(rng, centres, 0.1, 2000)
    moved = centres.copy()
    moved[1] += 0.5  # squared move 4 * 0.25 = 1, in one class of three
    b, yb = _clusters(rng, moved, 0.1, 2000)
    assert class_mean_shift(a, ya, b, yb) == pytest.approx(1 / 3, abs=0.01)
    keep = yb != 1  # without class 1 in b only classes 0 and 2 are compared
    assert class_mean_shift(a, ya, b[keep], yb[keep]) == pytest.approx(0.0, abs=0.01)
    with pytest.raises(ValueError, match="share no class"):
        class_mean_shift(a[ya == 0], ya[ya == 0], b[yb == 2], yb[yb == 2])
    with pytest.raises(ValueError, match="at least 2 classes"):
        class_spread(a[ya == 0], ya[ya == 0])
    with pytest.raises(ValueError, match="labels"):
        class_spread(a, ya[:-1])


# ------------------------------------------------------------------ evaluate_digits


def test_evaluate_digits_on_real_train_images(split):
    x, y = split.train_images[:400], split.train_labels[:400]
    r = evaluate_digits(x, y, seed=0)
    assert {"fd", "fd_reference", "accuracy", "num"} <= set(r)
    assert r["num"] == 400 and r["num_reference"] == 400
    assert r["accuracy"] >= 0.97
    assert np.isfinite(r["fd"]) and np.isfinite(r["fd_reference"])
    assert r["fd"] < 3.0 * r["fd_reference"] + 1.0  # real digits score like the reference
    t = r["fd_terms"]
    assert r["fd"] == pytest.approx(t["mean"] + t["trace_samples"] + t["trace_heldout"] - t["cross"])
    c = r["class_terms"]  # real digits: the same class structure as the held-out ones
    assert c["within_samples"] == pytest.approx(c["within_heldout"], rel=0.25)
    assert c["between_samples"] == pytest.approx(c["between_heldout"], rel=0.25)
    assert c["class_mean_shift"] < 0.2 * c["within_heldout"]
    assert evaluate_digits(x[y == 3], y[y == 3])["class_terms"] is None  # one class has no class structure


def test_evaluate_digits_detects_bad_samples(split):
    x, y = split.train_images[:400], split.train_labels[:400]
    noise = np.random.default_rng(0).uniform(-1, 1, size=x.shape).astype(np.float32)
    bad = evaluate_digits(noise, y)
    good = evaluate_digits(x, y)
    assert bad["fd"] > 10 * good["fd"]
    assert bad["accuracy"] < 0.5
    # a permuted label set lowers the accuracy but not the FD
    assert evaluate_digits(x, (y + 1) % 10)["accuracy"] < 0.1


def test_evaluate_digits_num_reference_cap(split):
    x, y = split.train_images[:20], split.train_labels[:20]
    assert evaluate_digits(x, y, num_reference=10**6)["num_reference"] == len(split.train_images)


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (np.zeros((4, 8, 8), np.float32), np.zeros(4, np.int64), r"\(N, 1, 8, 8\)"),
        (np.zeros((4, 1, 16, 16), np.float32), np.zeros(4, np.int64), r"\(N, 1, 8, 8\)"),
        (np.zeros((4, 1, 8, 8), np.float32), np.zeros(3, np.int64), "labels must have shape"),
        (np.zeros((4, 1, 8, 8), np.float32), np.array([0, 1, 2, 10]), "0..9"),
        (np.zeros((4, 1, 8, 8), np.float32), np.array([0, -1, 2, 3]), "0..9"),
        (np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.float32), "integers"),
        (np.full((4, 1, 8, 8), np.nan, np.float32), np.zeros(4, np.int64), "non-finite"),
        (np.zeros((4, 1, 8, 8), np.uint8), np.zeros(4, np.int64), "floating"),
    ],
)
def test_evaluate_digits_bad_inputs(images, labels, match):
    with pytest.raises(ValueError, match=match):
        evaluate_digits(images, labels)


# ------------------------------------------------------------------ PSNR


def test_paired_psnr_known_value():
    a = np.random.default_rng(0).uniform(-0.5, 0.5, size=(6, 1, 8, 8)).astype(np.float32)
    assert paired_psnr(a, a + 0.2) == pytest.approx(20.0, abs=1e-4)  # 20 log10(2 / 0.2)
    assert paired_psnr(a, a + 0.02, data_range=1.0) == pytest.approx(20 * np.log10(1 / 0.02), abs=1e-3)


def test_paired_psnr_identical_is_capped():
    a = np.zeros((3, 1, 8, 8), np.float32)
    assert paired_psnr(a, a) == 100.0
    b = a.copy()
    b[0] += 0.2  # one pair at 20 dB, two identical pairs at the cap
    assert paired_psnr(a, b) == pytest.approx((20.0 + 100.0 + 100.0) / 3, abs=1e-4)


def test_paired_psnr_bad_inputs():
    a = np.zeros((3, 1, 8, 8))
    with pytest.raises(ValueError, match="shapes differ"):
        paired_psnr(a, a[:2])
    with pytest.raises(ValueError, match="non-finite"):
        paired_psnr(a, np.full_like(a, np.inf))


# ------------------------------------------------------------------ grid


def test_grid_png_size_and_rows(tmp_path, split):
    from PIL import Image

    x, y = split.heldout_images[:50], split.heldout_labels[:50]
    p = save_image_grid(x, y, tmp_path / "sub" / "grid.png", nrow_per_class=6, scale=4)
    img = np.asarray(Image.open(p))
    assert img.shape == (10 * 32 + 9, 6 * 32 + 5) and img.dtype == np.uint8
    # first cell of row c is the first image of class c, upscaled 4x
    for c in range(10):
        first = x[np.flatnonzero(y == c)[0], 0]
        want = np.round((first + 1) * 127.5).astype(np.uint8)
        assert np.array_equal(img[c * 33 : c * 33 + 32 : 4, 0:32:4], want)
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_grid_default_columns(tmp_path):
    y = np.array([3, 3, 3, 0])
    p = save_image_grid(np.zeros((4, 1, 8, 8)), y, tmp_path / "g.png", scale=1)
    from PIL import Image

    assert Image.open(p).size == (3 * 8 + 2, 10 * 8 + 9)  # (width, height)


# ------------------------------------------------------------------ ONNX extractor


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_extractor_matches_digits_features(tmp_path, split, clf):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")

    class Feats(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.features(x)

    path = tmp_path / "feats.onnx"
    torch.onnx.export(Feats(clf).eval(), torch.zeros(2, 1, 8, 8), str(path), input_names=["images"],
                      output_names=["features"], dynamic_axes={"images": {0: "n"}, "features": {0: "n"}},
                      dynamo=False)
    x = split.heldout_images[:100]
    ref = DigitsFeatures(clf)(x)
    ext = OnnxFeatureExtractor(path, batch_size=32)
    assert isinstance(ext, FeatureExtractor)
    got = ext(x)
    assert got.shape == (100, 64)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert frechet_distance(got, DigitsFeatures(clf)(split.train_images[:200])) == pytest.approx(
        frechet_distance(ref, DigitsFeatures(clf)(split.train_images[:200])), rel=1e-3)

    # resize: a 16x16 input is brought back to the network's 8x8
    up = torch.nn.functional.interpolate(torch.from_numpy(x[:5]), scale_factor=2, mode="nearest").numpy()
    assert OnnxFeatureExtractor(path, resize=(8, 8))(up).shape == (5, 64)
    # a fixed batch dimension: fed in padded batches of exactly that size
    fixed = tmp_path / "fixed.onnx"
    torch.onnx.export(Feats(clf).eval(), torch.zeros(32, 1, 8, 8), str(fixed), dynamo=False)
    np.testing.assert_allclose(OnnxFeatureExtractor(fixed)(x), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="no input named"):
        OnnxFeatureExtractor(path, input_name="pixels")
