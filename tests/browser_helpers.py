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
from typing import TYPE_CHECKING, Any

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


DECISION_TEXT = {
    "taxon": "Confident",
    "lookalike": "Look-alike: probably not CITES material",
    "uncertain": "Uncertain: refer to an expert",
    "outside_training_domain": "Outside the training domain: refer to an expert",
}


def probability_text(p: float) -> str:
    """What the page should write for a probability, in English ("likely, 87%")."""
    if p >= 0.9:
        words = "very likely"
    elif p >= 0.66:
        words = "likely"
    elif p >= 0.33:
        words = "possible"
    else:
        words = "unlikely"
    pct = ">99" if p >= 0.995 else "<1" if p < 0.005 else str(round(p * 100))
    return f"{words}, {pct}%"


def badge_text(label_kind: str | None, appendix: str | None) -> str:
    """The appendix badge the page should show for a class of ``label_kind`` (English)."""
    if label_kind in ("lookalike", "not_wildlife"):
        return "Look-alike"
    if appendix in ("I", "II", "III"):
        return f"Appendix {appendix}"
    return "Not listed" if label_kind == "cites" else "Appendix unknown"


def check_answer(page: Page, ident: dict[str, Any]) -> None:
    """Assert that the English page shows what the API answered for ``ident``."""
    from playwright.sync_api import expect

    decision = ident["decision"]
    kind = decision["kind"]
    expect(page.locator("#decision")).to_have_text(DECISION_TEXT[kind])
    decided = kind in ("taxon", "lookalike")
    candidates = page.locator("#candidates li")
    if decided:
        taxon = decision.get("taxon")
        if taxon:
            expect(page.locator("#sci")).to_have_text(taxon["scientific_name"])
        else:
            expect(page.locator("#common")).to_have_text(decision["label_name"])
        label_kind = "lookalike" if kind == "lookalike" else "cites"
        expect(page.locator("#badge")).to_have_text(badge_text(label_kind, decision["appendix"]))
        expect(page.locator("#prob")).to_have_text(probability_text(decision["probability"]))
        others = [c for c in ident["top_k"] if c["label"] != decision["label"]]
    else:
        expect(page.locator("#facts")).to_be_hidden()
        expect(page.locator("#candidates-title")).to_have_text("Closest candidates")
        others = ident["top_k"]
    expect(candidates).to_have_count(max(1, len(others)))
    for index, cand in enumerate(others):
        item = candidates.nth(index)
        expect(item.locator(".badge")).to_have_text(badge_text(cand["kind"], cand["appendix"]))
        expect(item.locator(".prob")).to_have_text(probability_text(cand["probability"]))
    expect(page.locator("#guidance-text")).to_have_text(ident["guidance"]["text"])


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
