"""``tests/conftest.py``: modules that ``-m`` would deselect whole are not imported."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from tests.conftest import pytest_ignore_collect


class _Config:
    def __init__(self, markexpr: str) -> None:
        self.markexpr = markexpr

    def getoption(self, name: str) -> str:
        assert name == "markexpr"
        return self.markexpr


def _ignored(path: Path, markexpr: str) -> bool:
    return bool(pytest_ignore_collect(path, cast(pytest.Config, _Config(markexpr))))


def test_whole_module_deselections_are_not_imported(tmp_path: Path) -> None:
    torch_module = tmp_path / "test_torchy.py"
    torch_module.write_text('import pytest\npytest.importorskip("torch")\n')
    marked = tmp_path / "test_marked.py"
    marked.write_text("import pytest\npytestmark = [pytest.mark.browser, pytest.mark.timeout(9)]\n")
    plain = tmp_path / "test_plain.py"
    plain.write_text("def test_x() -> None:\n    assert True\n")
    fast = "not slow and not browser and not train"
    assert _ignored(torch_module, fast) and _ignored(marked, fast)
    assert not _ignored(plain, fast)
    # expressions that select, or mix, are left to pytest's own deselection
    assert not _ignored(torch_module, "train")
    assert not _ignored(marked, "browser or not slow")
    assert not _ignored(torch_module, "")
    assert not _ignored(tmp_path / "helpers.py", fast)
