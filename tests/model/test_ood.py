"""Out-of-domain model: fit, score, save and load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.ood import OodError, OodModel, fit_ood, threshold_at

DIM = 64


def blobs(rng: np.random.Generator, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Two training classes: unit Gaussians around +3 and -3 on the first axis."""
    offset = np.zeros(DIM)
    offset[0] = 3.0
    features = np.concatenate(
        [rng.normal(size=(n, DIM)) + offset, rng.normal(size=(n, DIM)) - offset]
    )
    return features, np.repeat([0, 1], n)


def test_scores_separate_training_blobs_from_a_far_blob() -> None:
    rng = np.random.default_rng(1)
    features, labels = blobs(rng)
    model = fit_ood(features, labels, components=16, normalize=False)
    held_out, _ = blobs(rng, 100)
    far = rng.normal(size=(100, DIM))
    far[:, 5] += 12.0  # a direction the training data never varied in
    beyond = rng.normal(size=(100, DIM))
    beyond[:, 0] += 15.0  # along the principal direction, past both classes

    in_scores = model.score(held_out)
    threshold = threshold_at(model, held_out, 0.99)
    assert 0.7 < float(np.median(in_scores)) < 1.5
    assert np.all(model.score(far) > threshold)
    assert np.all(model.score(beyond) > threshold)
    assert model.score(far).dtype == np.float32


def test_save_load_round_trip_is_exact_and_small(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(400, 1280)).astype(np.float32)
    labels = rng.integers(0, 10, size=400)
    model = fit_ood(features, labels)  # L2-normalised, k = 128
    assert model.components == 128
    path = tmp_path / "ood.npz"
    model.save(path)
    assert path.stat().st_size < 2_000_000
    loaded = OodModel.load(path)
    np.testing.assert_array_equal(loaded.score(features[:20]), model.score(features[:20]))
    assert loaded.normalize and loaded.feature_dim == 1280


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    features, labels = blobs(rng, 20)
    with pytest.raises(OodError, match="labels must have shape"):
        fit_ood(features, labels[:-1])
    with pytest.raises(OodError, match="NaN"):
        fit_ood(np.full((10, 4), np.nan), np.zeros(10))
    model = fit_ood(features, labels, components=4)
    with pytest.raises(OodError, match=f"shape \\(N, {DIM}\\)"):
        model.score(np.zeros((2, DIM + 1)))
    damaged = tmp_path / "ood.npz"
    damaged.write_bytes(b"not an npz")
    with pytest.raises(OodError, match="not a readable"):
        OodModel.load(damaged)
    partial = tmp_path / "partial.npz"
    np.savez(partial, center=np.zeros(3))
    with pytest.raises(OodError, match="missing arrays"):
        OodModel.load(partial)


def test_knn_scores_near_training_points_low_and_round_trips(tmp_path: Path) -> None:
    from model.ood import KNN_METHOD, KnnOodModel, fit_knn, load_ood

    rng = np.random.default_rng(0)
    centre = np.zeros(16)
    centre[0] = 1.0
    train = centre + rng.normal(0, 0.05, (200, 16))
    model = fit_knn(train, k=5)
    near = model.score(centre[None] + rng.normal(0, 0.05, (20, 16)))
    far_direction = np.zeros(16)
    far_direction[1] = 1.0
    far = model.score(far_direction[None] + rng.normal(0, 0.05, (20, 16)))
    assert near.max() < 0.05 < 0.5 < far.min()
    path = tmp_path / "ood.npz"
    model.save(path)
    loaded = load_ood(path, KNN_METHOD)
    assert isinstance(loaded, KnnOodModel) and loaded.k == 5
    np.testing.assert_allclose(loaded.score(train[:7]), model.score(train[:7]), atol=1e-6)


def test_knn_refuses_bad_input(tmp_path: Path) -> None:
    from model.ood import KNN_METHOD, fit_knn, load_ood

    with pytest.raises(OodError, match="k must be"):
        fit_knn(np.ones((3, 4)), k=0)
    with pytest.raises(OodError, match="NaN"):
        fit_knn(np.full((3, 4), np.nan))
    model = fit_knn(np.eye(4))
    with pytest.raises(OodError, match=r"shape \(N, 4\)"):
        model.score(np.ones((2, 5)))
    broken = tmp_path / "broken.npz"
    np.savez(broken, bank=np.ones((2, 2)))
    with pytest.raises(OodError, match="missing"):
        load_ood(broken, KNN_METHOD)
    with pytest.raises(OodError, match="unknown OOD method"):
        load_ood(broken, "magic")
