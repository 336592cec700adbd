"""docs/architecture.md names every module of model/, training/, service/ and bench/, so the map
the next engineer reads cannot silently fall behind the code."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "training", "service", "bench")


def python_modules() -> list[str]:
    """Every ``.py`` file of the packages (migrations excluded), as repository paths."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            relative = path.relative_to(REPO_ROOT)
            if "migrations" not in relative.parts:
                found.append(relative.as_posix())
    return found


def test_the_packages_have_modules() -> None:
    modules = python_modules()
    assert "model/predictor.py" in modules
    assert "service/app.py" in modules


def test_architecture_doc_names_every_module() -> None:
    text = (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [m for m in python_modules() if f"`{m}`" not in text]
    assert not missing, f"docs/architecture.md does not describe: {', '.join(missing)}"
