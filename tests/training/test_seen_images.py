"""The default bundle knows its own images (issue 14): the docs example
``evaluate --bundle weights/default --data ../shared/data/met-ivory --limit 200`` is mostly
training images, and evaluate can now tell."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.bundle import load_bundle
from tests.conftest import REPO_ROOT
from training.data import load_folder, subsample
from training.seen_images import SEEN_IMAGES_FILE, overlap, read_seen_images, split_samples


def test_the_default_bundle_lists_its_digest_file_in_the_manifest() -> None:
    bundle = load_bundle(REPO_ROOT / "weights" / "default")  # verifies every listed sha256
    assert SEEN_IMAGES_FILE in bundle.manifest.files
    seen = read_seen_images(bundle)
    assert seen is not None
    splits = bundle.manifest.training["splits"]
    for name in ("train", "val", "test"):
        assert sum(1 for s in seen.values() if s == name) == splits[name]["images"]


@pytest.mark.shared_data
def test_the_docs_example_is_mostly_images_the_bundle_saw(shared_data: Path) -> None:
    bundle = load_bundle(REPO_ROOT / "weights" / "default")
    seen = read_seen_images(bundle)
    assert seen is not None
    samples = subsample(load_folder(shared_data / "met-ivory"), 200)
    found = overlap(seen, [s.path for s in samples])
    counts = found.counts
    assert counts["unseen"] == 0  # every met-ivory image is in one of the splits
    assert found.trained_or_tuned > 120  # about 70% training + 15% validation
    assert sum(found.unseen_mask) == counts["test"]


@pytest.mark.shared_data
def test_split_samples_finds_the_bundles_own_splits_again(shared_data: Path) -> None:
    """The recorded datasets, filtered by the digest file: as many images per split as the
    manifest says, each with its dataset's folder name."""
    bundle = load_bundle(REPO_ROOT / "weights" / "default")
    found = split_samples(bundle, shared_data, ("val", "test"))
    splits = bundle.manifest.training["splits"]
    for name in ("val", "test"):
        assert len(found[name]) == splits[name]["images"]
        assert {folder for _, folder in found[name]} == {"met-ivory", "wood-trade-groups"}
    assert not {s.path for s, _ in found["val"]} & {s.path for s, _ in found["test"]}
