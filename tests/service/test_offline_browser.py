"""Offline use of the officers' page in Chromium (phone size) against a real service: the same
pixels as the core's preprocessing, the same decisions as the Python predictor, and the whole
offline flow (identify without network, reload offline, sync when the network returns).

Screenshots go to ``docs/screenshots/`` only with ``CITES_WRITE_SCREENSHOTS=1`` (``make
screenshots``); a normal run never changes tracked files.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from model.ood import KNN_METHOD, KnnOodModel
from model.predictor import Predictor
from model.preprocess import PreprocessConfig, preprocess_bytes
from service.offline import web_runtime
from tests.browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PHONE,
    SCREENSHOTS,
    default_bundle,
    require_browser,
)
from tests.factories import BLUE, GREEN, RED, make_tiny_bundle, solid_image_bytes
from tests.service_helpers import ServiceHandle, running_service
from tests.tools import tool_missing

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, Route

logger = logging.getLogger(__name__)
pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

JPEG_MEAN_TOLERANCE = 0.02
"""Mean absolute difference allowed between the browser's and Pillow's model input for a JPEG
(normalised units, range [-1, 1]; 0.02 is 2.5 levels of 8 bits): the browser decodes JPEGs with
its own libjpeg-turbo settings and cannot decode at reduced scale as Pillow's draft mode does.
For PNG input (no lossy decoding) resize, crop and normalisation are Pillow's to the bit in each
pass, but Pillow 13 does not always run its two passes in the same order (horizontal first or
vertical first; each pass rounds to 8 bits), so a pixel may differ by one 8-bit level (2/255 in
normalised units): PNG_MAX_TOLERANCE, with PNG_MEAN_TOLERANCE on average."""
PNG_MAX_TOLERANCE = 2.0 / 255.0 + 1e-6
PNG_MEAN_TOLERANCE = 0.003


def _require_runtime() -> None:
    require_browser()
    if not web_runtime().available:
        tool_missing("ONNX Runtime Web is not installed: run `make web-runtime` (npm ci)")


@pytest.fixture(scope="module")
def bundle(request: pytest.FixtureRequest) -> Path:
    """The default bundle when trained, else the tiny test bundle with an OOD model."""
    return default_bundle() or Path(request.getfixturevalue("tiny_bundle_ood"))


UPDATED_VERSION = "tiny-offline"
KNN_VERSION = "tiny-knn"
KNN_THRESHOLD = 0.05
"""Pure red, blue and green score about 0 on the tiny kNN bundle; grey, magenta and white 0.07
to 0.5: outside the domain."""


@pytest.fixture(scope="module")
def offline_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder with a tiny camera bundle to activate (a model update) and a tiny kNN
    bundle."""
    weights = tmp_path_factory.mktemp("offline-weights")
    make_tiny_bundle(weights, version=UPDATED_VERSION, with_ood=True)
    make_tiny_bundle(
        weights,
        version=KNN_VERSION,
        with_int8=True,
        with_ood=True,
        ood_method=KNN_METHOD,
        ood_threshold=KNN_THRESHOLD,
    )
    return weights


@pytest.fixture(scope="module")
def service(
    bundle: Path, offline_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceHandle]:
    """The real service on a free loopback port, serving ``bundle``, with the bundles of
    ``offline_weights`` beside it."""
    _require_runtime()
    (offline_weights / bundle.name).symlink_to(bundle.resolve(), target_is_directory=True)
    data = tmp_path_factory.mktemp("offline-data")
    with running_service(bundle, data, extra_bundles_dir=offline_weights) as handle:
        yield handle


@pytest.fixture(scope="module")
def officer_key(service: ServiceHandle) -> str:
    """An officer's API key."""
    return service.make_key_direct("officer", "Officer Okafor")


@pytest.fixture()
def browser_context(service: ServiceHandle) -> Iterator[BrowserContext]:
    """A fresh phone-sized browser context. Afterwards, fails the test on any script error and
    on any request that left the service."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    urls: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport=PHONE, device_scale_factor=1, is_mobile=True, has_touch=True, locale="en-GB"
        )
        context.set_default_timeout(60_000)
        context.on("page", lambda p: p.on("pageerror", lambda exc: errors.append(str(exc))))
        context.on("request", lambda request: urls.append(request.url))
        yield context
        browser.close()
    assert not errors, f"script errors on the page: {errors}"
    elsewhere = [u for u in urls if not u.startswith((service.url + "/", "blob:", "data:"))]
    assert not elsewhere, f"the page fetched from outside the service: {elsewhere}"


def _shoot(page: Page, name: str, *, top: str | None = None) -> None:
    """A documentation screenshot of the phone's screen, with the element ``top`` scrolled to
    the top, only when asked for (``make screenshots``)."""
    if os.environ.get("CITES_WRITE_SCREENSHOTS") != "1":
        return
    if top is not None:
        page.locator(top).evaluate("el => el.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(500)  # the page's own smooth scroll to the answer has ended
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False, animations="disabled")


def _wait_for_service_worker(page: Page, timeout_s: float = 30.0) -> None:
    """Wait until the service worker controls the page (polled: the page's CSP forbids the
    string evaluation ``wait_for_function`` uses)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(
        "Boolean(navigator.serviceWorker && navigator.serviceWorker.controller)"
    ):
        assert time.monotonic() < deadline, "the service worker never took control of the page"
        page.wait_for_timeout(100)


def _sign_in(page: Page, service: ServiceHandle, key: str) -> None:
    page.goto(service.url + "/")
    page.fill("#apikey", key)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#app:not([hidden])")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_PREPROCESS_JS = """
async ({ data, mime, config }) => {
  const { preprocessBlob } = await import("/static/js/offline/preprocess.js");
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const { input } = await preprocessBlob(new Blob([bytes], { type: mime }), config);
  return Array.from(input);
}
"""


def _test_images(shared_data: Path | None) -> list[tuple[str, bytes, str]]:
    """(name, bytes, mime): synthetic PNGs of awkward sizes and, when present, real JPEGs."""
    rng = np.random.default_rng(7)
    cases: list[tuple[str, bytes, str]] = []
    for width, height in ((640, 480), (301, 777), (224, 224), (1000, 257)):
        noise = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        pixels = np.clip(noise * 0.5 + gradient * 0.5, 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG")
        cases.append((f"png-{width}x{height}", out.getvalue(), "image/png"))
    if shared_data is not None:
        for path in sorted((shared_data / "met-ivory" / "ivory").glob("*.jpg"))[:3]:
            cases.append((f"jpeg-{path.name}", path.read_bytes(), "image/jpeg"))
    return cases


def test_browser_preprocessing_reproduces_the_core(
    browser_context: BrowserContext,
    service: ServiceHandle,
    bundle: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Test vectors written by model/preprocess.py: exact for PNG, within the stated tolerance
    for JPEG (browser decoding)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    config = PreprocessConfig.from_dict(manifest["preprocess"])
    try:
        shared: Path | None = Path(request.getfixturevalue("shared_data"))
    except pytest.skip.Exception:
        shared = None
    page = browser_context.new_page()
    page.goto(service.url + "/")
    report: list[str] = []
    for name, data, mime in _test_images(shared):
        expected = preprocess_bytes(data, config).ravel()
        got = np.asarray(
            page.evaluate(
                _PREPROCESS_JS, {"data": _b64(data), "mime": mime, "config": config.to_dict()}
            ),
            dtype=np.float32,
        )
        assert got.shape == expected.shape, name
        diff = np.abs(got - expected)
        report.append(f"{name}: mean {diff.mean():.5f}, max {diff.max():.4f}")
        if mime == "image/png":
            assert diff.max() <= PNG_MAX_TOLERANCE, f"{name}: {report[-1]}"
            assert diff.mean() < PNG_MEAN_TOLERANCE, f"{name}: {report[-1]}"
        else:
            assert diff.mean() < JPEG_MEAN_TOLERANCE, f"{name}: {report[-1]}"
    logger.info("browser vs core preprocessing: %s", "; ".join(report))


_DECIDE_JS = """
async ({ cases, language }) => {
  const { identification } = await import("/static/js/offline/decide.js");
  const pkg = await (await fetch("/v1/models/active/offline-package", {
    headers: { Authorization: "Bearer " + sessionStorage.getItem("citesVision.apiKey") },
  })).json();
  return cases.map((c) => identification(pkg, c.logits, Float32Array.from(c.features),
    { origin: c.origin, language }));
}
"""


def _golden_cases(predictor: Predictor) -> list[dict[str, Any]]:
    """Network outputs that exercise every rule: the outputs of real-looking inputs, confident
    logits for each label, flat logits, split mass between labels, and far-away features;
    each with no origin and with origins of split listings."""
    rng = np.random.default_rng(11)
    labels = predictor.labels
    size = predictor.preprocess.input_size
    inputs = rng.normal(0, 0.6, size=(3, 3, size, size)).astype(np.float32)
    # the output the bundle's OOD model scores: the pooled features, or a kNN bundle's
    # reference_features (what the page's runModel hands to identification())
    scored = predictor.ood_output
    logits, features = predictor._run(inputs, ("logits", scored))
    rows: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = list(
        zip(logits, features, strict=True)
    )
    base = features[0]
    if isinstance(predictor.bundle.ood, KnnOodModel):
        # random inputs are far from every training image on the frozen features; a training
        # image's own features (a row of the reference bank) are in the domain
        base = predictor.bundle.ood.bank[0].astype(np.float32)
    for index in range(len(labels)):
        for margin in (1.0, 3.0, 8.0):
            row = np.zeros(len(labels), dtype=np.float32)
            row[index] = margin
            rows.append((row, base))
    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            row = np.full(len(labels), -2.0, dtype=np.float32)
            row[a] = row[b] = 2.0
            rows.append((row, base))
    rows.append((np.zeros(len(labels), dtype=np.float32), base))
    rows.append((rng.normal(0, 2, len(labels)).astype(np.float32), base * 25.0 + 3.0))
    rows.append((rng.normal(0, 2, len(labels)).astype(np.float32), rng.random(base.shape[0]) * 4))
    for spike in (0, base.shape[0] // 2, base.shape[0] - 1):  # unlike anything trained on
        far = np.zeros_like(base)
        far[spike] = 10.0
        rows.append((rng.normal(0, 2, len(labels)).astype(np.float32), far))
    rows.append((rng.normal(0, 2, len(labels)).astype(np.float32), -base))
    cases = []
    for origin in (None, "KE", "ZA", "BR", "FR"):
        for row_logits, row_features in rows:
            cases.append(
                {
                    "logits": [float(v) for v in row_logits],
                    "features": [float(v) for v in row_features],
                    "origin": origin,
                }
            )
    return cases


def test_golden_decisions_match_the_python_predictor(
    browser_context: BrowserContext, service: ServiceHandle, officer_key: str, bundle: Path
) -> None:
    """The page's interpreter of the offline package decides exactly as model/decision.py."""
    predictor = Predictor(bundle, threads=1)
    cases = _golden_cases(predictor)
    page = browser_context.new_page()
    _sign_in(page, service, officer_key)
    got = page.evaluate(_DECIDE_JS, {"cases": cases, "language": "en"})
    kinds: set[str] = set()
    rules: set[str] = set()
    for case, browser in zip(cases, got, strict=True):
        [python] = predictor.predict_outputs(
            np.asarray([case["logits"]]),
            np.asarray([case["features"]]),
            countries=[case["origin"]],
            ood_features=np.asarray([case["features"]]),
        )
        d = python.decision
        b = browser["decision"]
        where = f"case {case['logits'][:3]}... origin {case['origin']}"
        assert b["kind"] == d.kind, where
        assert b["rule"] == d.rule, where
        assert b["label"] == d.label_id, where
        assert (b["taxon"] or {}).get("id") == d.taxon_id, where
        assert b["appendix"] == d.appendix, where
        assert b["rank"] == d.rank, where
        assert b["probability"] == pytest.approx(d.probability, abs=2e-6), where
        assert b["explanation"] == d.reason, where
        assert [c["label"] for c in browser["top_k"]] == [s.label.id for s in python.top], where
        if python.ood_score is not None:
            assert browser["ood_score"] == pytest.approx(python.ood_score, rel=1e-3, abs=1e-3)
        kinds.add(d.kind)
        rules.add(d.rule.split(":")[0])
    logger.info("golden cases: %d, kinds %s, rules %s", len(cases), sorted(kinds), sorted(rules))
    assert {"taxon", "lookalike", "uncertain"} <= kinds
    if predictor.bundle.ood is not None:
        assert "outside_training_domain" in kinds


_FUSE_JS = """
async ({ groups, language }) => {
  const { fusedIdentification } = await import("/static/js/offline/decide.js");
  const pkg = await (await fetch("/v1/models/active/offline-package", {
    headers: { Authorization: "Bearer " + sessionStorage.getItem("citesVision.apiKey") },
  })).json();
  return groups.map((g) => fusedIdentification(pkg,
    g.views.map((v) => ({ logits: v.logits, features: Float32Array.from(v.features) })),
    { origin: g.origin, language }));
}
"""


def test_golden_fusions_match_the_python_predictor(
    browser_context: BrowserContext, service: ServiceHandle, officer_key: str, bundle: Path
) -> None:
    """Several photos of one item fused on the phone (``fusedIdentification``) give the answer
    the service's ``Predictor.fuse`` gives for the same network outputs: mean probabilities,
    the package's OOD fusion, the same decision; each photo's own answer too."""
    predictor = Predictor(bundle, threads=1)
    cases = [c for c in _golden_cases(predictor) if c["origin"] in (None, "KE")]
    rng = np.random.default_rng(5)
    groups = []
    for _ in range(150):
        origin = [None, "KE"][int(rng.integers(2))]
        pool = [c for c in cases if c["origin"] == origin]
        chosen = rng.choice(len(pool), size=int(rng.integers(2, 7)), replace=False)
        groups.append({"origin": origin, "views": [pool[int(i)] for i in chosen]})
    page = browser_context.new_page()
    _sign_in(page, service, officer_key)
    got = page.evaluate(_FUSE_JS, {"groups": groups, "language": "en"})
    kinds: set[str] = set()
    for number, (group, browser) in enumerate(zip(groups, got, strict=True)):
        views = group["views"]
        predictions = predictor.predict_outputs(
            np.asarray([v["logits"] for v in views]),
            np.asarray([v["features"] for v in views]),
            countries=[group["origin"]] * len(views),
            ood_features=np.asarray([v["features"] for v in views]),
        )
        fused, fusion = predictor.fuse(predictions, origin_country=group["origin"])
        d = fused.decision
        b = browser["decision"]
        where = f"group {number} ({len(views)} views, origin {group['origin']})"
        assert (b["kind"], b["rule"], b["label"]) == (d.kind, d.rule, d.label_id), where
        assert (b["taxon"] or {}).get("id") == d.taxon_id, where
        assert b["appendix"] == d.appendix, where
        assert b["probability"] == pytest.approx(d.probability, abs=2e-6), where
        assert b["explanation"] == d.reason, where
        assert [c["label"] for c in browser["top_k"]] == [s.label.id for s in fused.top], where
        expected_fusion = fusion.to_dict()
        if fused.ood_score is not None:
            assert browser["ood_score"] == pytest.approx(fused.ood_score, rel=1e-3, abs=1e-3)
            assert browser["fusion"]["ood_score"] == pytest.approx(
                expected_fusion["ood_score"], rel=1e-3, abs=1e-3
            )
        for key in ("method", "ood", "views_used", "views_excluded"):
            assert browser["fusion"][key] == expected_fusion[key], where
        for position, (view, prediction) in enumerate(
            zip(browser["views"], predictions, strict=True)
        ):
            assert view["position"] == position and view["used"] is True, where
            assert view["decision"]["kind"] == prediction.decision.kind, where
            assert view["top"]["label"] == prediction.top[0].label.id, where
        kinds.add(d.kind)
    logger.info("golden fusions: %d, kinds %s", len(groups), sorted(kinds))
    assert {"taxon", "uncertain"} <= kinds
    if predictor.bundle.ood is not None:
        assert "outside_training_domain" in kinds


def _photo(bundle: Path, request: pytest.FixtureRequest) -> tuple[str, bytes]:
    """A real ivory photo when ../shared/data is here, else a plain red JPEG."""
    try:
        shared = Path(request.getfixturevalue("shared_data"))
        path = sorted((shared / "met-ivory" / "ivory").glob("*.jpg"))[0]
        return path.name, path.read_bytes()
    except pytest.skip.Exception:
        out = io.BytesIO()
        Image.new("RGB", (640, 480), (220, 30, 30)).save(out, format="JPEG", quality=90)
        return "red.jpg", out.getvalue()


def test_offline_identification_and_sync(
    browser_context: BrowserContext,
    service: ServiceHandle,
    officer_key: str,
    bundle: Path,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """Load, go offline, identify on the phone, match the server, reload offline, sync."""
    from playwright.sync_api import expect

    name, data = _photo(bundle, request)
    photo = tmp_path / name
    photo.write_bytes(data)
    page = browser_context.new_page()

    # 1. Online start: the page stores the active model for offline use.
    _sign_in(page, service, officer_key)
    version = json.loads((bundle / "manifest.json").read_text())["version"]
    expect(page.locator("#offline-status")).to_contain_text(f"model {version} is stored")
    _wait_for_service_worker(page)

    # 2. No network: identify on the phone.
    browser_context.set_offline(True)
    page.set_input_files("#file", str(photo))
    started = time.perf_counter()
    page.click("#identify-btn")
    expect(page.locator("#device-note")).to_be_visible(timeout=120_000)
    first_answer_s = time.perf_counter() - started
    expect(page.locator("#device-note")).to_contain_text(f"model {version}")
    expect(page.locator("#error")).to_be_hidden()  # no network error above a phone's answer
    expect(page.locator("#pending-count")).to_contain_text("waiting to be sent: 1")
    expect(page.locator("#feedback")).to_be_hidden()
    shown_id = page.evaluate("document.getElementById('result').dataset.id")
    assert shown_id.startswith("device:")
    device_decision = page.locator("#decision").inner_text()
    _shoot(page, "11-offline-answer", top="#result")
    logger.info("time to the first offline answer: %.2f s", first_answer_s)

    # 3. Reload without network: the page, the session and the waiting case are still there.
    page.reload()
    expect(page.locator("#whoami")).to_contain_text("working offline as Officer Okafor")
    expect(page.locator("#pending-count")).to_contain_text("waiting to be sent: 1")
    expect(page.locator("#offline-status")).to_contain_text(f"with model {version}")
    _shoot(page, "12-waiting-to-sync", top="#app")

    # 4. The network returns: the case is sent, and the service lists it with both answers.
    browser_context.set_offline(False)
    page.evaluate("window.dispatchEvent(new Event('online'))")
    expect(page.locator("#pending-status")).to_contain_text("Sent: 1", timeout=60_000)
    expect(page.locator("#pending-count")).to_contain_text("Nothing is waiting")
    expect(page.locator("#recent-list")).to_contain_text(
        f"Made offline on the phone with model {version} · the service agrees"
    )
    _shoot(page, "14-synced-case-in-recent-cases", top="#recent")
    _shoot(page, "13-synced", top="#pending")
    with service.client(officer_key) as client:
        items = client.get("/v1/identifications", params={"mine": "true"}).json()["items"]
        synced = [i for i in items if i.get("device")]
        assert len(synced) == 1
        stored = synced[0]
        assert stored["device"]["model_version"] == version
        assert stored["device"]["made_on_device"] is True
        # The phone's answer equals the service's own answer for the same photo.
        assert stored["device"]["agrees_with_service"] is True, stored
        assert stored["device"]["decision"]["kind"] == stored["decision"]["kind"]
        assert device_decision.strip() != ""
        assert stored["device"]["decision"]["probability"] == pytest.approx(
            stored["decision"]["probability"], abs=0.05
        )

    # 5. Two photos of one item without network: fused on the phone as the service fuses them,
    #    kept as one case with both photos, synced as one multi-view identification.
    mirrored = tmp_path / f"mirrored-{name}"
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored, quality=92)
    browser_context.set_offline(True)
    page.set_input_files("#file", str(photo))
    page.set_input_files("#add-photo", str(mirrored))
    page.click("#identify-btn")
    expect(page.locator("#device-note")).to_be_visible(timeout=120_000)
    expect(page.locator("#views-answer")).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#views li")).to_have_count(2)
    expect(page.locator("#pending-list")).to_contain_text("2 photos")
    page.locator("#views li button").nth(1).click()  # the second photo, from the phone itself
    assert page.evaluate("document.getElementById('photo').src").startswith("blob:")
    _shoot(page, "36-offline-two-photos", top="#views-answer")
    browser_context.set_offline(False)
    page.evaluate("window.dispatchEvent(new Event('online'))")
    expect(page.locator("#pending-status")).to_contain_text("Sent: 1", timeout=60_000)
    expect(page.locator("#pending-count")).to_contain_text("Nothing is waiting")
    with service.client(officer_key) as client:
        items = client.get("/v1/identifications", params={"mine": "true"}).json()["items"]
        fused = [i for i in items if (i.get("device") or {}).get("views") == 2]
        assert len(fused) == 1, items
        stored = client.get(f"/v1/identifications/{fused[0]['id']}").json()
        assert len(stored["views"]) == 2 and stored["fusion"]["views_used"] == [0, 1]
        assert stored["device"]["agrees_with_service"] is True, stored
        assert stored["device"]["decision"]["probability"] == pytest.approx(
            stored["decision"]["probability"], abs=0.05
        )

    # 6. Online, but the upload and its retry fail on the network: the page offers to identify
    #    on the phone instead, and does.
    def down(route: Route) -> None:
        if route.request.method == "POST":
            route.abort("internetdisconnected")
        else:
            route.continue_()

    page.route("**/v1/identifications", down)
    page.set_input_files("#file", str(photo))
    page.click("#identify-btn")
    expect(page.locator("#error")).to_contain_text("the network failed", timeout=30_000)
    expect(page.locator("#identify-here")).to_be_visible()
    page.click("#identify-here")
    expect(page.locator("#device-note")).to_be_visible(timeout=60_000)
    expect(page.locator("#pending-count")).to_contain_text("waiting to be sent: 1")
    page.unroute("**/v1/identifications")

    # 7. A newly activated model is taken at the next online start, and the next offline answer
    #    names it.
    admin = service.make_key_direct("admin", "Admin")
    with service.client(admin) as client:
        response = client.post(f"/v1/models/{UPDATED_VERSION}/activate")
        assert response.status_code == 200, response.text
    try:
        page.reload()
        expect(page.locator("#offline-status")).to_contain_text(
            f"New model {UPDATED_VERSION} stored", timeout=60_000
        )
        browser_context.set_offline(True)
        page.set_input_files("#file", str(photo))
        page.click("#identify-btn")
        expect(page.locator("#device-note")).to_contain_text(
            f"model {UPDATED_VERSION}", timeout=60_000
        )
    finally:
        browser_context.set_offline(False)
        with service.client(admin) as client:
            client.post(f"/v1/models/{bundle.name}/activate")


_RUN_MODEL_JS = """
async ({ inputs, language }) => {
  const { cachedPackage, runModel } = await import("/static/js/offline/runtime.js");
  const { identification } = await import("/static/js/offline/decide.js");
  const pkg = await cachedPackage();
  const answers = [];
  for (const input of inputs) {
    const { logits, features } = await runModel(pkg, Float32Array.from(input));
    answers.push(identification(pkg, logits, features, { language }));
  }
  return { version: pkg.version, ood: pkg.model.outputs.ood_features, answers };
}
"""


def test_a_knn_bundle_is_scored_on_the_phone(
    browser_context: BrowserContext,
    service: ServiceHandle,
    officer_key: str,
    bundle: Path,
    offline_weights: Path,
) -> None:
    """A bundle whose out-of-domain check is kNN on the frozen branch's features
    (``--ood-method knn-reference``) is stored for offline use, and the phone's runtime scores
    the same output with the same bank: the same OOD scores and decisions as the service."""
    from playwright.sync_api import expect

    admin = service.make_key_direct("admin", "Admin")
    with service.client(admin) as client:
        response = client.post(f"/v1/models/{KNN_VERSION}/activate")
        assert response.status_code == 200, response.text
    try:
        page = browser_context.new_page()
        _sign_in(page, service, officer_key)
        expect(page.locator("#offline-status")).to_contain_text(
            f"model {KNN_VERSION} is stored", timeout=60_000
        )
        predictor = Predictor(offline_weights / KNN_VERSION, threads=1)
        colours = (RED, BLUE, GREEN, (128, 128, 128), (255, 0, 255), (250, 250, 250))
        inputs = [predictor.preprocess_bytes(solid_image_bytes(colour)) for colour in colours]
        got = page.evaluate(
            _RUN_MODEL_JS, {"inputs": [x.ravel().tolist() for x in inputs], "language": "en"}
        )
        assert got["version"] == KNN_VERSION and got["ood"] == "reference_features"
        expected = predictor.predict_arrays(np.stack(inputs))
        kinds = set()
        for colour, python, browser in zip(colours, expected, got["answers"], strict=True):
            assert python.ood_score is not None
            assert browser["ood_score"] == pytest.approx(python.ood_score, abs=2e-3), colour
            assert browser["decision"]["kind"] == python.decision.kind, colour
            assert browser["decision"]["rule"] == python.decision.rule, colour
            kinds.add(python.decision.kind)
        assert "outside_training_domain" in kinds and "taxon" in kinds
    finally:
        with service.client(admin) as client:
            client.post(f"/v1/models/{bundle.name}/activate")
