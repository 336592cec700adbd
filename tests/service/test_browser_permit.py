"""The officer page's "check against a permit" form in a real browser (Debian's Chromium,
headless, phone size) against a real running service: the form in three languages, a permit
check end to end with its verdict, permit checks and per-photo verdicts, the words following a
change of language, and refused permit data shown in the page's language."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser_helpers import SCREENSHOTS
from tests.factories import solid_image_bytes
from tests.service.test_browser import _sign_in, officer_key, page, service  # noqa: F401
from tests.service_helpers import ServiceHandle

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


def _shoot(tab: Page, selector: str, name: str) -> None:
    """A documentation picture of one part of the page, only when asked for
    (``make screenshots``); tests never write tracked files otherwise."""
    if os.environ.get("CITES_WRITE_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab.locator(selector).screenshot(path=str(SCREENSHOTS / f"{name}.png"), animations="disabled")


def _fill_expired_ivory_permit(tab: Page, photo: Path) -> None:
    tab.set_input_files("#permit-files", str(photo))
    tab.fill("#pf-number", "26KE000042")
    tab.select_option("#pf-type", "export")
    tab.fill("#pf-issuing", "KE")
    tab.fill("#pf-export", "KE")
    tab.fill("#pf-import", "FR")
    tab.fill("#pf-name", "Loxodonta africana")
    tab.select_option("#pf-appendix", "II")  # Kenyan elephants are Appendix I
    tab.select_option("#pf-source", "W")
    tab.select_option("#pf-purpose", "T")  # commercial: not for Appendix I
    tab.fill("#pf-from", "2025-01-01")
    tab.fill("#pf-until", "2025-06-30")  # expired
    tab.fill("#pf-caseref", "PERMIT-CHECK-1")


def test_check_against_a_permit(
    page: Page,  # noqa: F811
    service: ServiceHandle,  # noqa: F811
    officer_key: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    photo = tmp_path / "tusk.png"
    photo.write_bytes(solid_image_bytes((250, 10, 10), (320, 240)))
    _sign_in(page, service, officer_key)
    expect(page.locator("#permit-title")).to_have_text("Check against a permit")

    # nothing chosen: the page says so before sending
    page.click("#permit-btn")
    expect(page.locator("#error")).to_contain_text("Choose at least one photo of the goods.")

    _fill_expired_ivory_permit(page, photo)
    expect(page.locator("#permit-chosen")).to_contain_text("1 photo(s) ready")
    _shoot(page, "#permit-form", "15-permit-form")
    page.click("#permit-btn")
    result = page.locator("#permit-result")
    expect(result).to_be_visible()
    expect(page.locator("#permit-verdict")).to_have_text("Does not match the permit")
    expect(page.locator("#permit-badge")).to_have_text("Appendix I")
    checks = page.locator("#permit-checks li")
    expect(checks).to_have_count(3)
    expect(checks.nth(0)).to_contain_text("declared Appendix II, but Loxodonta africana from KE")
    expect(checks.nth(1)).to_contain_text("the permit expired on 2025-06-30")
    expect(checks.nth(2)).to_contain_text("purpose T (commercial) is not allowed")
    expect(page.locator("#permit-images li")).to_have_count(1)
    expect(page.locator("#permit-images li").first).to_contain_text("Photo 1:")
    expect(page.locator("#permit-meta")).to_contain_text("26KE000042")
    _shoot(page, "#permit-result", "16-permit-verdict")

    # the service stored it with the case: it reads back through the API
    with service.client(officer_key) as client:
        stored = client.get("/v1/verifications", params={"case_ref": "PERMIT-CHECK-1"}).json()
    assert stored["total"] == 1 and stored["items"][0]["verdict"] == "inconsistent"
    assert result.get_attribute("data-id") == stored["items"][0]["id"]

    # a change of language rewords the verdict and the service's reasons
    page.select_option("#lang", "fr")
    expect(page.locator("#permit-verdict")).to_have_text("Non conforme au permis")
    expect(page.locator("#permit-checks li").nth(1)).to_contain_text("le permis a expiré le")
    expect(page.locator("#permit-title")).to_have_text("Vérifier avec un permis")
    _shoot(page, "#permit-result", "17-permit-verdict-french")
    page.select_option("#lang", "es")
    expect(page.locator("#permit-checks li").nth(1)).to_contain_text("el permiso venció el")
    expect(page.locator("label[for=pf-purpose]")).to_have_text("Propósito (casilla 5a)")
    expect(page.locator("#pf-purpose option[value=T]")).to_have_text("T: comercial")

    # refused data: the service's problem, in the page's language
    page.fill("#pf-quantity", "-3")
    page.click("#permit-btn")
    expect(page.locator("#error")).to_contain_text("no es un número positivo")
