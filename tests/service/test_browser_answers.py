"""The officer page and the API docs in Chromium (issue 14).

- A new photo, an error or a new identification clears the previous answer: photo -> answer
  -> bad file -> error leaves no stale answer on screen.
- Colour follows the action: Appendix I (detain) red, an unusable photo neutral, an in-domain
  "not listed" (look-alike) green; the group caveat is shown under the answer.
- ``/docs`` and ``/redoc`` work with every request outside the service blocked.

Screenshots go to a temporary folder unless ``make screenshots`` asks for docs/screenshots.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from model.labels import Label
from tests import images
from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, PHONE, require_browser, shoot
from tests.factories import BLUE, RED, blank_image_bytes, make_tiny_bundle, solid_image_bytes
from tests.service_helpers import ServiceHandle, running_service

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

GROUP_LABELS = (
    Label(0, "ivory", "Ivory (elephant or walrus)", "ivory-elephant-walrus", "cites"),
    Label(1, "ceramic", "Ceramic or porcelain", "ceramic-porcelain", "lookalike"),
    Label(2, "rosewood", "Indian rosewood", "dalbergia-latifolia", "cites"),
)
"""The tiny model with the ivory product group as its red label, as in weights/default."""

DETAIN_RED = "rgb(176, 0, 32)"
NEUTRAL_GREY = "rgb(107, 115, 123)"
CLEAR_GREEN = "rgb(30, 107, 51)"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHandle]:
    require_browser()
    # with an OOD model: look-alike answers ("clear") come only after the OOD check passed
    bundle = make_tiny_bundle(
        tmp_path_factory.mktemp("weights"),
        version="tiny-group",
        labels=GROUP_LABELS,
        with_ood=True,
        ood_threshold=30.0,
    )
    with running_service(bundle, tmp_path_factory.mktemp("service-data")) as handle:
        yield handle


@pytest.fixture(scope="module")
def officer_key(service: ServiceHandle) -> str:
    return service.make_key_direct("officer", "Officer Diallo")


@pytest.fixture()
def page(service: ServiceHandle) -> Iterator[Page]:
    """A phone-sized page; every request that would leave the service is aborted (an isolated
    network), and the test fails on any script error or such request."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    blocked: list[str] = []

    def only_local(route: Route) -> None:
        url = route.request.url
        if url.startswith((service.url + "/", "blob:", "data:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=PHONE, device_scale_factor=1, locale="en-GB")
        context.set_default_timeout(30_000)
        context.route("**/*", only_local)
        tab = context.new_page()
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        yield tab
        browser.close()
    assert not errors, f"script errors: {errors}"
    assert not blocked, f"requests that needed the internet: {blocked}"


def _sign_in(page: Page, service: ServiceHandle, key: str) -> None:
    page.goto(service.url + "/")
    page.fill("#apikey", key)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#app:not([hidden])")


def _identify(page: Page, name: str, data: bytes, mime: str = "image/png") -> None:
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])
    page.click("#identify-btn")


def _answer_colour(page: Page) -> str:
    colour: str = page.eval_on_selector("#answer", "el => getComputedStyle(el).borderLeftColor")
    return colour


def test_a_bad_file_after_an_answer_leaves_no_stale_answer(
    page: Page, service: ServiceHandle, officer_key: str
) -> None:
    from playwright.sync_api import expect

    _sign_in(page, service, officer_key)
    _identify(page, "ivory.png", solid_image_bytes(RED))
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#decision")).to_have_text("Confident")
    shoot(page, "30-answer-before-bad-file", full_page=False, centre="#answer")

    # A text file: the error, and nothing of the previous answer or photo.
    page.set_input_files(
        "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}]
    )
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#feedback")).to_be_hidden()
    expect(page.locator("#chosen")).not_to_contain_text("notes.txt")
    expect(page.locator("#identify-btn")).to_be_disabled()
    assert page.locator("#decision").inner_text() == ""
    shoot(page, "31-bad-file-no-stale-answer", full_page=False, centre="#error")

    # An answer again, then a file that looks like an image but is not: the service's 422.
    _identify(page, "ivory.png", solid_image_bytes(RED))
    expect(page.locator("#result")).to_be_visible()
    _identify(page, "broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#result")).to_be_hidden()
    # on a phone the officer was down at the answer: the error is brought into view
    expect(page.locator("#error")).to_be_in_viewport()


def test_colour_follows_the_action_and_the_caveat_is_shown(
    page: Page, service: ServiceHandle, officer_key: str
) -> None:
    from playwright.sync_api import expect

    _sign_in(page, service, officer_key)
    # Ivory group, no origin: Appendix I at worst -> detain, red; the caveat names walrus.
    _identify(page, "ivory.png", solid_image_bytes(RED))
    expect(page.locator("#result")).to_have_attribute("data-action", "detain")
    expect(page.locator("#badge")).to_have_text("Appendix I")
    assert _answer_colour(page) == DETAIN_RED
    caveat = page.locator("#caveat")
    expect(caveat).to_be_visible()
    expect(caveat).to_contain_text("walrus (Odobenus rosmarus): Appendix III")
    stripe = page.locator("#recent-list li").first
    expect(stripe).to_have_class("recent-item decision-taxon action-detain")
    shoot(page, "32-detain-red-with-caveat", full_page=False, centre="#answer")

    # A blank photo: unusable, neutral (never green, never a taxon).
    _identify(page, "blank.png", blank_image_bytes((230, 215, 180)))
    expect(page.locator("#result")).to_have_attribute("data-decision", "unusable_image")
    expect(page.locator("#result")).to_have_attribute("data-action", "refer")
    assert _answer_colour(page) == NEUTRAL_GREY
    expect(page.locator("#caveat")).to_be_hidden()
    expect(page.locator("#facts")).to_be_hidden()
    shoot(page, "33-unusable-photo", full_page=False, centre="#answer")

    # A look-alike: an in-domain "not listed" answer, the only green.
    _identify(page, "ceramic.png", solid_image_bytes(BLUE))
    expect(page.locator("#result")).to_have_attribute("data-action", "clear")
    assert _answer_colour(page) == CLEAR_GREEN

    # French: the decision's explanation-driven texts and the caveat follow the language.
    page.select_option("#lang", "fr")
    _identify(page, "ivory.png", solid_image_bytes(RED))
    expect(page.locator("#caveat")).to_contain_text("morse (Odobenus rosmarus) : Annexe III")


def _png(color: tuple[int, int, int], index: int) -> dict[str, object]:
    """One photo for set_input_files; each index gives another size (another file)."""
    size = (320 + 10 * index, 240 + 10 * index)
    data = solid_image_bytes(color, size)
    return {"name": f"view{index}.png", "mimeType": "image/png", "buffer": data}


def test_several_photos_of_one_item_give_one_answer(
    page: Page, service: ServiceHandle, officer_key: str
) -> None:
    """ "Add another photo": the photos go together to /v1/identifications:views; the answer
    says how many photos it used and what each said; photos that disagree are "uncertain";
    a new "Choose a file" starts a new item; six photos are the most."""
    from playwright.sync_api import expect

    _sign_in(page, service, officer_key)
    expect(page.locator("#views-picker")).to_be_hidden()
    page.set_input_files("#file", files=[_png(RED, 0)])
    expect(page.locator("#views-picker")).to_be_visible()
    page.set_input_files("#add-photo", files=[_png(RED, 1)])
    expect(page.locator("#chosen")).to_contain_text("2 photos of one item ready")
    with page.expect_response("**/v1/identifications:views") as answered:
        page.click("#identify-btn")
    assert answered.value.status == 201
    ident = answered.value.json()
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#decision")).to_have_text("Confident")
    assert [v["used"] for v in ident["views"]] == [True, True]
    expect(page.locator("#views-answer")).to_be_visible()
    expect(page.locator("#views-summary")).to_have_text("One answer from 2 of 2 photos.")
    expect(page.locator("#views li")).to_have_count(2)
    expect(page.locator("#views li").nth(1)).to_contain_text("Photo 2")
    with page.expect_response("**/image?view=1") as photo:
        page.locator("#views li").nth(1).locator("button").click()
    assert photo.value.status == 200
    shoot(page, "35-several-photos-one-answer", full_page=False, centre="#views-answer")

    # Ivory on one photo, ceramic on the other: refer to an expert, never an all-clear.
    page.set_input_files("#file", files=[_png(RED, 2)])  # a new item: its first photo
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#chosen")).to_contain_text("Photo ready: view2.png")
    page.set_input_files("#add-photo", files=[_png(BLUE, 3)])
    page.select_option("#lang", "fr")
    page.click("#identify-btn")
    expect(page.locator("#result")).to_be_visible()
    assert page.locator("#result").get_attribute("data-decision") == "uncertain"
    expect(page.locator("#views-summary")).to_have_text("Une réponse tirée de 2 photos sur 2.")
    page.select_option("#lang", "en")

    # A damaged second photo: the page names it, in plain words.
    page.set_input_files("#file", files=[_png(RED, 0)])
    # (a JPEG goes as it is; a canvas would re-encode what Chromium could draw of a PNG)
    damaged = {"name": "cut.jpg", "mimeType": "image/jpeg", "buffer": images.truncated_jpeg()}
    page.set_input_files("#add-photo", files=[damaged])
    page.click("#identify-btn")
    expect(page.locator("#error")).to_contain_text("Photo 2: The photo file is damaged")
    expect(page.locator("#result")).to_be_hidden()

    # Six photos are the most: the "add" picker goes away.
    page.set_input_files("#file", files=[_png(RED, 0)])
    for index in range(1, 6):
        page.set_input_files("#add-photo", files=[_png(RED, index)])
    expect(page.locator("#chosen")).to_contain_text("6 photos of one item ready")
    expect(page.locator("#views-picker")).to_be_hidden()

    # The network fails twice: the page offers "try again" and, with the model on the phone,
    # "identify on this phone", which fuses the six photos there (docs/web.md, "Offline use").
    page.route("**/v1/identifications:views", lambda route: route.abort("connectionreset"))
    page.click("#identify-btn")
    expect(page.locator("#retry")).to_be_visible()
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#identify-here")).to_be_visible()
    page.click("#identify-here")
    expect(page.locator("#device-note")).to_be_visible(timeout=60_000)
    expect(page.locator("#views li")).to_have_count(6)
    expect(page.locator("#views-summary")).to_have_text("One answer from 6 of 6 photos.")
    expect(page.locator("#pending-list")).to_contain_text("6 photos")


@pytest.mark.parametrize(
    ("path", "selector"),
    [("/docs", ".opblock-summary-path"), ("/redoc", "[data-section-id^='operation/']")],
)
def test_api_docs_work_without_internet(
    page: Page, service: ServiceHandle, path: str, selector: str
) -> None:
    page.goto(service.url + path)
    page.wait_for_selector(selector)
    text = page.locator("body").inner_text()
    for operation in ("/v1/identifications", "/v1/taxa"):
        assert operation in text, f"{operation} is not listed on {path}"
    shoot(page, f"34-api{path.replace('/', '-')}-offline", full_page=False)
