"""Shared pytest fixtures (keep small; append with care)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.factories import make_tiny_bundle

REPO_ROOT = Path(__file__).resolve().parents[1]

# What in a test module's source says its tests need more than the edit-test loop gives
# (`make test-fast` deselects these markers; `make test` runs everything).
_MODULE_MARKERS: dict[str, tuple[str, ...]] = {
    "train": ("import torch", 'importorskip("torch")', "from training.backbone", "import timm"),
    "live": ("running_service(", "subprocess.", "start_postgres("),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with ``train`` / ``live`` when its module drives torch or processes."""
    sources: dict[Path, str] = {}
    for item in items:
        path = Path(str(item.fspath))
        if path not in sources:
            sources[path] = path.read_text(encoding="utf-8") if path.suffix == ".py" else ""
        for marker, needles in _MODULE_MARKERS.items():
            if any(needle in sources[path] for needle in needles):
                item.add_marker(marker)


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository, or ``$CITES_SHARED_DATA``."""
    override = os.environ.get("CITES_SHARED_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-image folder; skips the test when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent (set CITES_SHARED_DATA to use it)")
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny bundle (see tests/factories.py): red -> label 0, blue -> 1, green -> 2."""
    return make_tiny_bundle(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def tiny_bundle_ood(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with an INT8 file (scale halved) and an OOD model."""
    return make_tiny_bundle(
        tmp_path_factory.mktemp("weights"), version="tiny-ood", with_int8=True, with_ood=True
    )
