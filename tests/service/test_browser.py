"""The officer web page in a real browser (Debian's Chromium, headless, phone size) against a
real running service: sign in, photograph, read the answer, heat map, correction, languages.

Screenshots of each step go to ``docs/screenshots/`` (shown in ``docs/web.md``). The service
serves ``weights/default`` when a bundle has been trained there, else the tiny test bundle.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from PIL import Image

from tests.browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PHONE,
    accessibility_problems,
    check_answer,
    default_bundle,
    require_browser,
    rotated_jpeg,
    shoot,
)
from tests.factories import solid_image_bytes
from tests.service_helpers import ServiceHandle, running_service

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceHandle]:
    """The real service on a free loopback port, serving the default (or tiny) bundle."""
    require_browser()
    bundle = default_bundle() or request.getfixturevalue("tiny_bundle")
    with running_service(Path(bundle), tmp_path_factory.mktemp("service-data")) as handle:
        yield handle


@pytest.fixture(scope="module")
def officer_key(service: ServiceHandle) -> str:
    """An officer's API key, made with the CLI."""
    return service.make_key("officer", "Officer Dupont")


@pytest.fixture()
def page(service: ServiceHandle) -> Iterator[Page]:
    """A fresh phone-sized page in headless Chromium. Afterwards, fails the test on any script
    error and on any request that left the service (no CDN, font or script from elsewhere)."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    urls: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport=PHONE, device_scale_factor=1, is_mobile=True, has_touch=True, locale="en-GB"
        )
        context.set_default_timeout(20_000)
        tab = context.new_page()
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.on("request", lambda request: urls.append(request.url))
        yield tab
        browser.close()
    assert not errors, f"script errors on the page: {errors}"
    elsewhere = [u for u in urls if not u.startswith((service.url + "/", "blob:", "data:"))]
    assert not elsewhere, f"the page fetched from outside the service: {elsewhere}"
    assert any(u.startswith(service.url + "/static/") for u in urls)  # requests were seen


def _sign_in(page: Page, service: ServiceHandle, key: str) -> None:
    page.goto(service.url + "/")
    page.fill("#apikey", key)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#app:not([hidden])")


@pytest.mark.shared_data
def test_officer_flow_on_a_phone(
    page: Page, service: ServiceHandle, officer_key: str, shared_data: Path
) -> None:
    """Sign in, identify a real photo, heat map, correct via the taxon search, French."""
    from playwright.sync_api import expect

    photo = sorted((shared_data / "met-ivory" / "ivory").glob("*.jpg"))[0]

    # 1. A wrong key is refused in plain words; the right one signs in.
    page.goto(service.url + "/")
    expect(page.locator("#signin-title")).to_have_text("Sign in")
    shoot(page, "01-sign-in")
    assert accessibility_problems(page) == []
    page.fill("#apikey", "cv_00000000_wrong")
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#error")).to_contain_text("The API key was not accepted")
    page.fill("#apikey", officer_key)
    page.press("#apikey", "Enter")
    expect(page.locator("#whoami")).to_contain_text("Officer Dupont (officer)")
    expect(page.locator("#error")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('citesVision.apiKey')") == officer_key
    assert page.evaluate("localStorage.getItem('citesVision.apiKey')") is None

    # Keyboard: Tab from "Sign out" reaches the camera button, which shows its focus.
    page.focus("#signout")
    page.keyboard.press("Tab")
    expect(page.locator("#camera")).to_be_focused()
    outline = page.eval_on_selector("label[for=camera]", "l => getComputedStyle(l).outlineStyle")
    assert outline == "solid"

    # 2. Pick the photo with a case reference; the first upload fails on the network and the
    #    page retries by itself.
    page.set_input_files("#file", str(photo))
    expect(page.locator("#chosen")).to_contain_text(photo.name)
    page.click("details.more summary")
    page.fill("#caseref", "SEIZ-2026-042")
    attempts: list[str] = []

    def flaky(route: Route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        attempts.append(route.request.method)
        if len(attempts) == 1:
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/v1/identifications", flaky)
    shoot(page, "02-photo-chosen")
    page.click("#identify-btn")
    result = page.locator("#result")
    expect(result).to_be_visible()
    page.unroute("**/v1/identifications")
    assert attempts == ["POST", "POST"], attempts
    expect(page.locator("#error")).to_be_hidden()

    # 3. The answer, readable at a glance, is what the service decided.
    ident_id = result.get_attribute("data-id")
    assert ident_id
    with service.client(officer_key) as api:
        stored = api.get(f"/v1/identifications/{ident_id}").json()
    assert stored["case_ref"] == "SEIZ-2026-042"
    assert max(stored["image"]["width"], stored["image"]["height"]) == 384  # sent as it was
    check_answer(page, stored)
    page.wait_for_function("() => document.getElementById('photo').naturalWidth > 0")
    page.wait_for_function(
        "() => Math.abs(document.getElementById('result').getBoundingClientRect().top) < 2"
    )
    shoot(page, "03-result-at-a-glance", full_page=False)
    shoot(page, "04-result")

    # 4. Heat map over the photo, toggled by keyboard.
    toggle = page.locator("#heatmap-toggle")
    toggle.focus()
    page.keyboard.press("Enter")
    expect(toggle).to_have_attribute("aria-pressed", "true")
    heatmap = page.locator("#heatmap")
    expect(heatmap).to_be_visible()
    page.wait_for_function("() => document.getElementById('heatmap').naturalWidth > 0")
    heat_box = heatmap.bounding_box()
    photo_box = page.locator("#photo").bounding_box()
    assert heat_box and photo_box and abs(heat_box["width"] - photo_box["width"]) < 2
    shoot(page, "05-heatmap", full_page=False, centre=".photo")

    # 5. Correct it with the taxon search (keyboard only), a note and a case reference.
    page.check("input[name=verdict][value=correct]")
    search = page.locator("#taxon-search")
    expect(search).to_be_focused()
    search.type("Elephas", delay=20)
    option = page.locator("#taxon-options [role=option]", has_text="Elephas maximus")
    expect(option).to_be_visible()
    shoot(page, "06-taxon-search", full_page=False, centre="#taxon-search")
    count = page.locator("#taxon-options [role=option]").count()
    index = next(
        i
        for i in range(count)
        if "Elephas maximus" in page.locator("#taxon-options [role=option]").nth(i).inner_text()
    )
    for _ in range(index + 1):
        search.press("ArrowDown")
    search.press("Enter")
    expect(page.locator("#taxon-chosen")).to_contain_text("Elephas maximus")
    page.fill("#note", "Schreger lines checked with a loupe")
    expect(page.locator("#fb-caseref")).to_have_value("SEIZ-2026-042")  # the photo's case
    page.fill("#fb-caseref", "LAB-7")
    page.click("#feedback-form button[type=submit]")
    expect(page.locator("#feedback-status")).to_contain_text("your correction was saved")
    shoot(page, "07-feedback-saved", full_page=False, centre="#feedback-form")
    assert accessibility_problems(page) == []

    # ... and the service stored it.
    with service.client(officer_key) as api:
        history = api.get(f"/v1/identifications/{ident_id}/feedback").json()["items"]
    assert len(history) == 1
    assert history[0]["verdict"] == "correct"
    assert history[0]["taxon_id"] == "elephas-maximus"
    assert history[0]["note"] == "Schreger lines checked with a loupe"  # no "Case ..." prefix
    assert history[0]["case_ref"] == "LAB-7"

    # 6. Recent cases show the identification with its correction.
    first = page.locator("#recent-list li").first
    expect(first).to_contain_text("corrected to")
    expect(first).to_contain_text("SEIZ-2026-042")
    shoot(page, "08-recent-cases", full_page=False, centre="#recent")

    # 7. French everywhere: interface, guidance from the API, recent cases.
    page.select_option("#lang", "fr")
    expect(page.locator("html")).to_have_attribute("lang", "fr")
    expect(page.locator("#identify-title")).to_have_text("Identifier un objet")
    expect(page.locator("#guidance")).to_have_attribute("lang", "fr")
    expect(page.locator("#recent-list li").first).to_contain_text("corrigé en")
    assert page.locator("#decision").inner_text() in {
        "Fiable",
        "Imitation : vérifiez les documents",
        "Incertain : consultez un expert",
        "Hors du domaine d’entraînement : consultez un expert",
    }
    expect(page.locator("#feedback-status")).to_contain_text("votre correction a été enregistrée")
    expect(page.locator("#taxon-chosen")).to_contain_text("éléphant d'Asie")
    expect(page.locator("#confirm-text")).to_contain_text("Oui, c’est")
    with service.client(officer_key) as api:
        in_french = api.get(
            f"/v1/identifications/{ident_id}", headers={"Accept-Language": "fr"}
        ).json()
    decision = in_french["decision"]
    decided = decision["kind"] in ("taxon", "lookalike")
    named = decision["taxon"] if decided else in_french["top_k"][0]["taxon"]
    if named and named.get("kind") != "taxon" and named.get("common_name"):
        # A material or product group is confirmed by its common name, here in French.
        expect(page.locator("#confirm-text")).to_have_text(f"Oui, c’est {named['common_name']}")
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, "09-french")
    assert accessibility_problems(page) == []

    # 8. The same page on a desktop screen: two columns.
    page.set_viewport_size({"width": 1280, "height": 900})
    identify_box = page.locator("#identify").bounding_box()
    result_box = page.locator("#result").bounding_box()
    assert identify_box and result_box and result_box["x"] > identify_box["x"] + 300
    shoot(page, "10-desktop-french")


def test_every_text_in_three_languages(page: Page, service: ServiceHandle) -> None:
    """Every interface text exists in English, French and Spanish, and every key the page names
    exists; switching languages leaves no English behind on the sign-in page."""
    from playwright.sync_api import expect

    page.goto(service.url + "/")
    gaps = page.evaluate(
        """async () => {
          const { MESSAGES } = await import("/static/js/messages.js");
          const keys = (lang) => Object.keys(MESSAGES[lang]);
          const gaps = {};
          for (const lang of ["fr", "es"]) {
            gaps[lang] = keys("en").filter((k) => !(k in MESSAGES[lang]))
              .concat(keys(lang).filter((k) => !(k in MESSAGES.en)));
          }
          const named = [...document.querySelectorAll("[data-i18n]")].map((e) => e.dataset.i18n)
            .concat([...document.querySelectorAll("[data-i18n-attr]")]
              .flatMap((e) => e.dataset.i18nAttr.split(";").map((p) => p.split(":")[1])));
          gaps.page = named.filter((k) => !(k in MESSAGES.en));
          return gaps;
        }"""
    )
    assert gaps == {"fr": [], "es": [], "page": []}
    for lang, title, hint in [
        ("es", "Iniciar sesión", "Introduzca la clave de API"),
        ("en", "Sign in", "Enter the API key"),
        ("fr", "Connexion", "Saisissez la clé d’API"),
    ]:
        page.select_option("#lang", lang)
        expect(page.locator("html")).to_have_attribute("lang", lang)
        expect(page.locator("#signin-title")).to_have_text(title)
        expect(page.locator("#signin .hint")).to_contain_text(hint)
    page.reload()  # the choice outlives the page, over the browser's en-GB
    expect(page.locator("#lang")).to_have_value("fr")
    expect(page.locator("#signin-title")).to_have_text("Connexion")


def test_confident_answer(
    page: Page, service: ServiceHandle, officer_key: str, tmp_path: Path
) -> None:
    """A plain red photo (the tiny bundle's ivory class) shows the badge and probability the
    service gave, whatever the bundle decides; the key survives a reload, not a sign-out."""
    from playwright.sync_api import expect

    red = tmp_path / "red.png"
    red.write_bytes(solid_image_bytes((250, 10, 10), (320, 240)))
    _sign_in(page, service, officer_key)
    page.reload()  # the key lasts for the tab's session: still signed in
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#signin")).to_be_hidden()
    page.set_input_files("#file", str(red))
    page.click("#identify-btn")
    expect(page.locator("#result")).to_be_visible()
    with service.client(officer_key) as api:
        ident = api.get(f"/v1/identifications/{page.locator('#result').get_attribute('data-id')}")
    check_answer(page, ident.json())

    page.click("#signout")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#result")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('citesVision.apiKey')") is None


def test_large_rotated_photo_is_downscaled_upright(
    page: Page, service: ServiceHandle, officer_key: str, tmp_path: Path
) -> None:
    """A 2400x1200 JPEG with EXIF orientation 6 reaches the service as an upright 800x1600."""
    from playwright.sync_api import expect

    source = tmp_path / "rotated.jpg"
    source.write_bytes(rotated_jpeg(2400, 1200))
    _sign_in(page, service, officer_key)
    page.set_input_files("#camera", str(source))
    # A slow network (Chromium's own throttling) keeps the progress indicator on screen. On
    # loopback Chromium reports the whole upload at once, so it is seen in its second phase.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    slow = {"offline": False, "latency": 400, "downloadThroughput": 50_000}
    cdp.send("Network.emulateNetworkConditions", {**slow, "uploadThroughput": 20_000})
    page.click("#identify-btn")
    expect(page.locator("#upload")).to_be_visible()
    expect(page.locator("#progress-label")).to_have_text(re.compile(r"Uploading… \d+%|Analysing…"))
    shoot(page, "02b-uploading", full_page=False, centre="#identify")
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    expect(page.locator("#upload")).to_be_hidden()
    cdp.send(
        "Network.emulateNetworkConditions",
        {**slow, "downloadThroughput": -1, "latency": 0, "uploadThroughput": -1},
    )
    ident_id = page.locator("#result").get_attribute("data-id")
    with service.client(officer_key) as api:
        stored = api.get(f"/v1/identifications/{ident_id}").json()
        image = api.get(f"/v1/identifications/{ident_id}/image")
    assert (stored["image"]["width"], stored["image"]["height"]) == (800, 1600)
    assert stored["image"]["mime"] == "image/jpeg"
    upright = Image.open(BytesIO(image.content)).convert("RGB")
    top = upright.getpixel((400, 100))
    bottom = upright.getpixel((400, 1500))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 150 and top[1] < 90, f"the red band should be on top, got {top}"
    assert abs(bottom[0] - bottom[1]) < 30, f"the bottom should be grey, got {bottom}"


def test_retry_button_after_network_failures(
    page: Page, service: ServiceHandle, officer_key: str, tmp_path: Path
) -> None:
    """When the upload and its automatic retry both fail, the officer gets a plain message and a
    "Try again" button that sends the same photo once the network is back."""
    from playwright.sync_api import expect

    photo = tmp_path / "red.png"
    photo.write_bytes(solid_image_bytes((250, 10, 10), (320, 240)))
    _sign_in(page, service, officer_key)
    page.set_input_files("#file", str(photo))
    posts: list[str] = []

    def down(route: Route) -> None:
        if route.request.method == "POST":
            posts.append(route.request.url)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    page.route("**/v1/identifications", down)
    page.click("#identify-btn")
    expect(page.locator("#error")).to_contain_text("the network failed")
    retry = page.locator("#retry")
    expect(retry).to_be_visible()
    expect(retry).to_be_focused()
    assert len(posts) == 2  # the first try and the automatic retry
    page.unroute("**/v1/identifications")
    page.keyboard.press("Enter")
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()
    expect(retry).to_be_hidden()


def test_api_errors_are_shown_in_plain_words(
    page: Page, service: ServiceHandle, officer_key: str, tmp_path: Path
) -> None:
    """A file that is not an image gets the service's problem+json detail, not a stack trace."""
    from playwright.sync_api import expect

    fake = tmp_path / "scan.png"
    fake.write_bytes(b"this is not a picture at all" * 10)
    _sign_in(page, service, officer_key)
    page.set_input_files("#file", str(fake))
    page.click("#identify-btn")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_have_attribute("role", "alert")
    with httpx.Client(base_url=service.url) as raw:
        problem = raw.post(
            "/v1/identifications",
            headers={"Authorization": f"Bearer {officer_key}"},
            files={"image": ("scan.png", fake.read_bytes(), "image/png")},
        ).json()
    expect(error).to_contain_text(problem["detail"])
    expect(page.locator("#result")).to_be_hidden()

    # A photo whose compressed data is damaged: refused, in the interface language.
    from tests.images import zeroed_middle
    from tests.service.test_abuse_decoding import photo_jpeg

    damaged = tmp_path / "damaged.jpg"
    damaged.write_bytes(zeroed_middle(photo_jpeg((640, 480))))
    page.select_option("#lang", "fr")
    page.set_input_files("#file", str(damaged))
    page.click("#identify-btn")
    expect(error).to_contain_text("Le fichier photo est endommagé")
    expect(page.locator("#result")).to_be_hidden()
    page.select_option("#lang", "en")
