"""Helpers for the browser tests: find Chromium and Playwright, make test photos, take screenshots.

The browser is Debian's Chromium (``/usr/bin/chromium``, installed by ``.ci/system-deps.sh``),
never one downloaded by Playwright. Tests that need it call :func:`require_browser` first, which
skips with the reason when Chromium or the Playwright package is missing.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from tests.tools import tool_missing

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
        tool_missing("the Playwright package is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        tool_missing(f"{CHROMIUM} is missing: run `make system-deps` (Debian's chromium package)")


def default_bundle() -> Path | None:
    """``weights/default`` when a bundle has been trained there, else None."""
    return DEFAULT_BUNDLE if (DEFAULT_BUNDLE / "manifest.json").is_file() else None


DECISION_TEXT = {
    "taxon": "Confident",
    "lookalike": "Look-alike: check the documents",
    "uncertain": "Uncertain: refer to an expert",
    "outside_training_domain": "Outside the training domain: refer to an expert",
    "unusable_image": "Photo unusable: retake it closer, in focus, with more light",
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
        if taxon and taxon.get("kind", "taxon") == "taxon":  # a species, genus...: in italics
            expect(page.locator("#sci")).to_have_text(taxon["scientific_name"])
        elif taxon:  # a product group or look-alike material: its common name
            name = taxon.get("common_name") or taxon["scientific_name"]
            expect(page.locator("#common")).to_have_text(name[:1].upper() + name[1:])
        else:
            expect(page.locator("#common")).to_have_text(decision["label_name"])
        label_kind = "lookalike" if kind == "lookalike" else "cites"
        expect(page.locator("#badge")).to_have_text(badge_text(label_kind, decision["appendix"]))
        expect(page.locator("#prob")).to_have_text(probability_text(decision["probability"]))
        listing = decision.get("listing")
        flagged = page.locator("#unverified")
        if listing and listing["verified"] is False:
            expect(flagged).to_be_visible()
        else:
            expect(flagged).to_be_hidden()
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
        unverified = bool(cand.get("listing")) and cand["listing"]["verified"] is False
        expect(item.locator(".flag-unverified")).to_have_count(1 if unverified else 0)
    expect(page.locator("#guidance-text")).to_have_text(ident["guidance"]["text"])


# Runs in the page: every visible text and control, checked for a contrast of at least 4.5:1
# against the first opaque background behind it (WCAG AA), and every form control for a name.
_AUDIT_JS = """
() => {
  const problems = [];
  const rgba = (text) => {
    const m = text.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(",").map((x) => parseFloat(x));
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const lum = (c) => {
    const ch = [c.r, c.g, c.b].map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * ch[0] + 0.7152 * ch[1] + 0.0722 * ch[2];
  };
  const background = (el) => {
    for (let node = el; node; node = node.parentElement) {
      const bg = rgba(getComputedStyle(node).backgroundColor);
      if (bg && bg.a > 0.99) return bg;
      if (node.tagName === "IMG") return null;
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    const st = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && st.visibility !== "hidden" && st.opacity !== "0";
  };
  for (const el of document.querySelectorAll("body *")) {
    if (!visible(el)) continue;
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const control = el.matches("input:not([type=radio]):not([type=file]), select, textarea");
    if (!own && !control) continue;
    const fg = rgba(getComputedStyle(el).color);
    const bg = background(el);
    if (!fg || !bg) continue;
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    if (ratio < 4.5) {
      const what = (el.id ? "#" + el.id : el.tagName.toLowerCase() + "." + el.className);
      const text = el.textContent.trim().slice(0, 40);
      problems.push(`contrast ${ratio.toFixed(2)} < 4.5 for ${what}: "${text}"`);
    }
  }
  for (const el of document.querySelectorAll("input, select, textarea, button")) {
    if (el.type === "hidden") continue;
    const labelled = el.labels && [...el.labels].some((l) => l.textContent.trim());
    const named = labelled
      || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby")
      || (el.tagName === "BUTTON" && el.textContent.trim());
    if (!named) problems.push(`no accessible name: ${el.outerHTML.slice(0, 80)}`);
  }
  return problems;
}
"""


def accessibility_problems(page: Page) -> list[str]:
    """Visible text below 4.5:1 contrast and form controls without a name, on the page now."""
    problems: list[str] = page.evaluate(_AUDIT_JS)
    return problems


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


_scratch_screenshots: Path | None = None


def screenshot_dir() -> Path:
    """Where screenshots go: ``docs/screenshots`` only with ``CITES_WRITE_SCREENSHOTS=1`` (``make
    screenshots``); otherwise a temporary folder, so that tests never change tracked files."""
    global _scratch_screenshots
    if os.environ.get("CITES_WRITE_SCREENSHOTS") == "1":
        return SCREENSHOTS
    if _scratch_screenshots is None:
        _scratch_screenshots = Path(tempfile.mkdtemp(prefix="cites-screenshots-"))
    return _scratch_screenshots


def shoot(page: Page, name: str, *, full_page: bool = True, centre: str | None = None) -> Path:
    """Save a screenshot as ``<name>.png`` in :func:`screenshot_dir`: the whole page, or what
    the screen shows (``full_page=False``), optionally after scrolling the element ``centre``
    to the middle of the screen."""
    if centre is not None:
        page.locator(centre).evaluate("el => el.scrollIntoView({block: 'center'})")
    folder = screenshot_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page, animations="disabled", caret="initial")
    logger.info("screenshot %s", path)
    return path
