"""Shared pytest fixtures (keep small; append with care)."""

from __future__ import annotations

import os
import re
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


# A ``-m`` expression that only deselects ("not slow and not browser ..."), as make test-fast's.
_ONLY_DESELECTS = re.compile(r"^\s*not\s+\w+(\s+and\s+not\s+\w+)*\s*$")


def _needle_markers(source: str) -> set[str]:
    """The markers :data:`_MODULE_MARKERS` gives a module with this source."""
    return {
        marker for marker, needles in _MODULE_MARKERS.items() if any(n in source for n in needles)
    }


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Do not import a test module whose every test the ``-m`` expression would deselect.

    Deselection happens after collection, and collecting a torch module costs seconds of import
    (docs/architecture.md). Only for expressions of ``not`` terms joined by ``and``:
    a module-wide marker they exclude deselects every test of the module, so skipping the
    import changes nothing but the time (and the "deselected" count)."""
    expression = str(config.getoption("markexpr") or "")
    name = collection_path.name
    if not (name.startswith("test_") and name.endswith(".py")):
        return None
    if not _ONLY_DESELECTS.match(expression):
        return None
    source = collection_path.read_text(encoding="utf-8")
    module_marks = _needle_markers(source)
    for line in source.splitlines():
        if line.startswith("pytestmark"):
            module_marks.update(re.findall(r"pytest\.mark\.(\w+)", line))
    excluded = set(re.findall(r"not\s+(\w+)", expression))
    return True if module_marks & excluded else None


def _run_order(item: pytest.Item) -> int:
    """Slow modules first: torch training, then browsers and the slow load tests."""
    if item.get_closest_marker("train"):
        return 0
    if item.get_closest_marker("browser") or item.get_closest_marker("slow"):
        return 1
    return 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with ``train`` / ``live`` when its module drives torch or processes, then
    run the slow modules first (a stable sort: each module's tests stay together and in order).
    ``make test`` gives each of its two workers whole files (``--dist loadfile``); the training
    modules, collected last, used to start last and leave one worker running them alone for
    minutes (docs/architecture.md)."""
    markers: dict[Path, set[str]] = {}
    for item in items:
        path = Path(str(item.fspath))
        if path not in markers:
            source = path.read_text(encoding="utf-8") if path.suffix == ".py" else ""
            markers[path] = _needle_markers(source)
        for marker in sorted(markers[path]):
            item.add_marker(marker)
    items.sort(key=_run_order)


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
