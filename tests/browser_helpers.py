"""Helpers for the browser tests: find Chromium and Playwright, make test photos, take screenshots.

The browser is Debian's Chromium (``/usr/bin/chromium``, installed by ``.ci/system-deps.sh``),
never one downloaded by Playwright. Tests that need it call :func:`require_browser` first, which
skips with the reason when Chromium or the Playwright package is missing.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

if TYPE_CHECKING:
    from playwright.sync_api import Page

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CITES_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE = {"width": 360, "height": 740}
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
DEFAULT_BUNDLE = REPO_ROOT / "weights" / "default"


def require_browser() -> None:
    """Skip the calling test, saying why, unless Playwright and Debian's Chromium are here."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the Playwright package is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: run `make system-deps` (Debian's chromium package)")


def default_bundle() -> Path | None:
    """``weights/default`` when a bundle has been trained there, else None."""
    return DEFAULT_BUNDLE if (DEFAULT_BUNDLE / "manifest.json").is_file() else None


def rotated_jpeg(width: int, height: int) -> bytes:
    """A JPEG stored ``width`` x ``height`` with EXIF orientation 6 (shown rotated 90° clockwise).

    The left third is red and the rest grey, so a viewer that honours the orientation shows the
    red band at the top. The browser must upload it upright: ``height`` wide, ``width`` high.
    """
    image = Image.new("RGB", (width, height), (128, 128, 128))
    image.paste((200, 30, 30), (0, 0, width // 3, height))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def shoot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Save a screenshot of the phone view (the whole page, or what the screen shows) as
    ``docs/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page, animations="disabled", caret="initial")
    logger.info("screenshot %s", path)
    return path
