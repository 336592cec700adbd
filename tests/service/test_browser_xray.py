"""The officer page with an x-ray answer, in headless Chromium against the running service.

The service holds a tiny camera bundle and a tiny x-ray bundle (``xray``); a scan whose red
object the tiny x-ray model answers "suspected ivory or bone" must come back with the scan
shown with its box drawn and the caption saying so.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from tests.browser_helpers import require_browser
from tests.factories import make_tiny_bundle
from tests.service.test_browser import page  # noqa: F401  (the page fixture, reused)
from tests.service.test_xray import XRAY_LABELS
from tests.service_helpers import ServiceHandle, running_service

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHandle]:
    """Camera and x-ray bundles served at once."""
    require_browser()
    weights = tmp_path_factory.mktemp("weights")
    make_tiny_bundle(weights, version="tiny-1")
    make_tiny_bundle(weights, version="xray", labels=XRAY_LABELS, modalities=("xray",))
    with running_service(weights / "tiny-1", tmp_path_factory.mktemp("data")) as handle:
        yield handle


def test_xray_answer_shows_the_box_on_the_scan(
    page: Page,  # noqa: F811
    service: ServiceHandle,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    scan = np.full((300, 400, 3), 250, dtype=np.uint8)
    scan[60:240, 60:340] = (235, 170, 90)
    scan[120:180, 150:230] = (250, 10, 10)
    path = tmp_path / "scan.png"
    Image.fromarray(scan).save(path)
    key = service.make_key("officer", "Scanner Operator")
    page.goto(service.url + "/")
    page.fill("#apikey", key)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#app:not([hidden])")
    page.click("details.more summary")
    expect(page.locator("#modality option[value=xray]")).to_be_enabled()
    page.select_option("#modality", "xray")
    page.set_input_files("#file", str(path))
    page.click("#identify-btn")
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#location-note")).to_be_visible()
    expect(page.locator("#location-note")).to_contain_text("red box")
    page.wait_for_function("() => document.getElementById('photo').naturalWidth > 0")
    shown = page.evaluate(
        """async () => {
            const img = document.getElementById('photo');
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const ctx = canvas.getContext('2d');
            ctx.drawImage(img, 0, 0);
            const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
            let red = 0;
            for (let i = 0; i < data.length; i += 4) {
              if (data[i] > 200 && data[i + 1] < 30 && data[i + 2] > 20) red++;
            }
            return red;
        }"""
    )
    assert shown > 50, "the page shows the scan with the box drawn"
    buffer = io.BytesIO(page.screenshot())
    assert Image.open(buffer).size[0] > 0
