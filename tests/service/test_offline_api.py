"""The service side of offline use, in-process: the offline package, the model file, the
service worker and icons, the browser runtime's files, and cases synced from a phone."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model.bundle import load_bundle
from model.fusion import DEFAULT_OOD_FUSION, MAX_VIEWS
from model.ood import KNN_METHOD, KnnOodModel
from model.predictor import Predictor
from model.taxonomy import default_taxonomy
from service.guidance import GuidanceBook
from service.icons import icon_png
from service.offline import RUNTIME_FILES, build_offline_package, web_runtime
from tests.factories import RED, make_tiny_bundle, solid_image_bytes
from tests.service.test_api import Api, assert_problem, start_api


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """An app on a tiny bundle (tiny-1), with tiny-2 next to it."""
    weights = tmp_path_factory.mktemp("weights")
    make_tiny_bundle(weights, version="tiny-1")
    make_tiny_bundle(weights, version="tiny-2", parent_version="tiny-1")
    yield from start_api(weights, tmp_path_factory.mktemp("data"))


def _package(api: Api) -> dict[str, Any]:
    response = api.client.get("/v1/models/active/offline-package", headers=api.h("officer"))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_offline_package_carries_the_bundle_and_taxonomy_data(api: Api) -> None:
    package = _package(api)
    predictor = api.context.host.current
    manifest = predictor.bundle.manifest
    assert package["version"] == predictor.version == "tiny-1"
    assert package["thresholds"] == manifest.thresholds.to_dict()
    assert package["temperature"] == manifest.temperature
    assert package["preprocess"] == manifest.preprocess.to_dict()
    assert [label["id"] for label in package["labels"]] == [label.id for label in predictor.labels]
    assert package["decision_rules"][0] == "ood_mahalanobis"
    assert package["decision_rules"][-1] == "below_thresholds"
    book = GuidanceBook.load()
    for kind, by_appendix in package["guidance"].items():
        for appendix, by_lang in by_appendix.items():
            for lang, item in by_lang.items():
                expected = book.lookup(kind, None if appendix == "none" else appendix, lang)
                assert (item["title"], item["text"]) == (expected.title, expected.text)
    # Every country's appendix in the package is the taxonomy's own answer.
    taxonomy = default_taxonomy()
    for taxon_id, entry in package["taxa"].items():
        table = entry["appendix"]
        for code in ("KE", "ZA", "BR", "CN", None):
            index = table["by_country"].get(code, table["default"]) if code else table["default"]
            resolution = taxonomy.appendix_for(taxon_id, code)
            expected = (
                None if resolution.appendix.value == "not_listed" else resolution.appendix.value
            )
            assert table["resolutions"][index]["appendix"] == expected, (taxon_id, code)
            assert table["resolutions"][index]["explanation"] == resolution.explanation
    assert package["model"]["outputs"]["ood_features"] == "features"
    # several photos on the phone are fused as the service fuses them (model/fusion.py)
    assert package["fusion"] == {
        "probabilities": "mean",
        "ood": DEFAULT_OOD_FUSION,
        "max_views": MAX_VIEWS,
    }
    assert package["runtime"]["files"] == list(RUNTIME_FILES)
    assert package["runtime"]["available"] == web_runtime().available


def test_a_knn_package_carries_its_bank_and_names_the_output_it_scores(tmp_path: Path) -> None:
    """A kNN bundle (``--ood-method knn-reference``): the page gets k, the threshold, the
    float16 bank exactly as the service scores it, and the model output to score."""
    path = make_tiny_bundle(
        tmp_path, version="tiny-knn", with_ood=True, ood_method=KNN_METHOD, ood_threshold=0.05
    )
    predictor = Predictor(path, threads=1)
    package = build_offline_package(predictor, default_taxonomy(), GuidanceBook.load())
    assert package["model"]["outputs"]["ood_features"] == "reference_features"
    ood = package["ood"]
    knn = predictor.bundle.ood
    assert isinstance(knn, KnnOodModel)
    assert (ood["method"], ood["threshold"], ood["k"]) == (KNN_METHOD, 0.05, knn.k)
    bank = np.frombuffer(base64.b64decode(ood["bank"]["data"]), dtype="<f2")
    np.testing.assert_array_equal(bank.reshape(ood["bank"]["shape"]), knn.bank)


def test_offline_package_needs_a_key(api: Api) -> None:
    assert_problem(api.client.get("/v1/models/active/offline-package"), 401, "unauthenticated")


def test_offline_model_is_the_served_file(api: Api) -> None:
    package = _package(api)
    response = api.client.get(package["model"]["url"], headers=api.h("officer"))
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == package["model"]["sha256"]
    assert len(response.content) == package["model"]["size"]
    stale = api.client.get(
        "/v1/models/active/offline-model?version=tiny-0", headers=api.h("officer")
    )
    assert_problem(stale, 409, "model-changed")


def test_a_newly_activated_model_changes_the_package(api: Api) -> None:
    before = _package(api)
    response = api.client.post("/v1/models/tiny-2/activate", headers=api.h("admin"))
    assert response.status_code == 200, response.text
    try:
        after = _package(api)
        assert after["version"] == "tiny-2" != before["version"]
        assert after["model"]["url"].endswith("version=tiny-2")
    finally:
        api.client.post("/v1/models/tiny-1/activate", headers=api.h("admin"))


def test_service_worker_shell_and_icons(api: Api) -> None:
    worker = api.client.get("/sw.js")
    assert worker.status_code == 200
    assert worker.headers["service-worker-allowed"] == "/"
    assert "javascript" in worker.headers["content-type"]
    shell = api.client.get("/offline-shell.json").json()["files"]
    assert "/" in shell and "/static/js/offline/decide.js" in shell
    assert "/static/manifest.webmanifest" in shell
    for url in shell:
        if url.startswith("/static/vendor/"):
            continue
        assert api.client.get(url).status_code == 200, url
    manifest = api.client.get("/static/manifest.webmanifest").json()
    for icon in manifest["icons"]:
        response = api.client.get(icon["src"])
        assert response.status_code == 200, icon["src"]
        if icon["type"] == "image/png":
            width, height = (int(v) for v in icon["sizes"].split("x"))
            assert Image.open(io.BytesIO(response.content)).size == (width, height)
    assert icon_png(192) == icon_png.__wrapped__(192)  # the same bytes on every run
    assert_problem(api.client.get("/icons/icon-100.png"), 404, "not-found")


def test_runtime_files_missing_say_how_to_install(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import service.routes.offline as routes

    monkeypatch.setattr(routes, "web_runtime", lambda: web_runtime(tmp_path))
    response = api.client.get("/static/vendor/ort/ort.wasm.min.mjs")
    problem = assert_problem(response, 404, "runtime-missing")
    assert "make web-runtime" in problem["detail"]
    assert _package(api)["runtime"]["available"] is False
    assert_problem(api.client.get("/static/vendor/ort/evil.mjs"), 404, "runtime-missing")


def _device_answer(api: Api, **overrides: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "case_id": str(uuid.uuid4()),
        "made_at": (datetime.now(UTC) - timedelta(hours=2)).isoformat(),
        "model_version": "tiny-1",
        "runtime": "onnxruntime-web 1.31.1 wasm int8",
        "decision": {
            "kind": "uncertain",
            "rule": "below_thresholds",
            "label": None,
            "taxon_id": None,
            "rank": None,
            "appendix": None,
            "probability": 0.4,
            "refer_to_expert": True,
        },
        "top_k": [{"label": "x", "probability": 0.4}],
        "ood_score": 0.9,
        "inference_ms": 812.0,
    }
    answer.update(overrides)
    return answer


def test_a_case_made_offline_is_stored_with_both_answers_once(api: Api) -> None:
    own = api.identify(RED).json()
    answer = _device_answer(
        api,
        decision={
            **_device_answer(api)["decision"],
            **{
                "kind": own["decision"]["kind"],
                "rule": own["decision"]["rule"],
                "label": own["decision"]["label"],
                "taxon_id": (own["decision"]["taxon"] or {}).get("id"),
                "appendix": own["decision"]["appendix"],
                "refer_to_expert": own["decision"]["refer_to_expert"],
            },
        },
    )
    first = api.identify(RED, device_answer=json.dumps(answer))
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["device"]["case_id"] == answer["case_id"]
    assert body["device"]["model_version"] == "tiny-1"
    assert body["device"]["agrees_with_service"] is True
    assert body["decision"] == own["decision"]  # the service's own answer, as always
    again = api.identify(RED, device_answer=json.dumps(answer))  # a retry after a lost reply
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]
    listed = api.client.get("/v1/identifications", headers=api.h("officer")).json()["items"]
    assert [
        i["id"] for i in listed if (i.get("device") or {}).get("case_id") == answer["case_id"]
    ] == [body["id"]]
    other = _device_answer(api, decision={**answer["decision"], "kind": "lookalike"})
    disagreeing = api.identify(RED, device_answer=json.dumps(other)).json()
    assert disagreeing["device"]["agrees_with_service"] is False


def _post_views(api: Api, bodies: list[bytes], device_answer: str) -> Any:
    return api.client.post(
        "/v1/identifications:views",
        headers=api.h("officer"),
        files=[("images", (f"view{i}.png", b, "image/png")) for i, b in enumerate(bodies)],
        data={"device_answer": device_answer},
    )


def test_a_multi_view_case_made_offline_is_stored_with_both_answers_once(api: Api) -> None:
    """Several photos of one item fused on the phone: synced as one multi-view identification,
    stored once with the phone's answer (``views`` photos), a retry returns it."""
    bodies = [solid_image_bytes(RED, size=(320, 240)), solid_image_bytes(RED, size=(300, 260))]
    answer = _device_answer(api, views=2)
    first = _post_views(api, bodies, json.dumps(answer))
    assert first.status_code == 201, first.text
    body = first.json()
    assert len(body["views"]) == 2
    assert body["device"]["case_id"] == answer["case_id"]
    assert body["device"]["views"] == 2
    assert body["device"]["agrees_with_service"] is (body["decision"]["kind"] == "uncertain")
    again = _post_views(api, bodies, json.dumps(answer))  # a retry after a lost reply
    assert again.status_code == 200, again.text
    assert again.json()["id"] == body["id"]
    stored = api.client.get(f"/v1/identifications/{body['id']}", headers=api.h("officer")).json()
    assert stored["device"]["views"] == 2 and len(stored["views"]) == 2


def test_a_device_answer_for_another_number_of_photos_is_refused(api: Api) -> None:
    """The phone's answer must be about the photos sent: 3 fused photos are not 1 or 2."""

    def stored() -> int:
        listed = api.client.get(
            "/v1/identifications", params={"limit": 100}, headers=api.h("officer")
        ).json()["items"]
        assert len(listed) < 100
        return len(listed)

    before = stored()
    three = json.dumps(_device_answer(api, views=3))
    problem = assert_problem(api.identify(RED, device_answer=three), 422, "invalid-device-answer")
    assert "3 photo(s)" in problem["detail"]
    bodies = [solid_image_bytes(RED, size=(320, 240)), solid_image_bytes(RED, size=(300, 260))]
    assert_problem(_post_views(api, bodies, three), 422, "invalid-device-answer")
    one = json.dumps(_device_answer(api))
    assert_problem(_post_views(api, bodies, one), 422, "invalid-device-answer")
    seven = json.dumps(_device_answer(api, views=7))
    assert_problem(_post_views(api, bodies, seven), 422, "invalid-device-answer")
    assert stored() == before  # nothing stored


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps({"case_id": "x"}),
        json.dumps({"case_id": "2e4617ca-3b17-400a-ad40-601ab49c1026", "surprise": 1}),
    ],
)
def test_a_bad_device_answer_is_refused_plainly(api: Api, text: str) -> None:
    problem = assert_problem(api.identify(RED, device_answer=text), 422, "invalid-device-answer")
    assert "device_answer" in problem["detail"]


def test_a_device_answer_from_the_future_is_refused(api: Api) -> None:
    future = _device_answer(api, made_at=(datetime.now(UTC) + timedelta(days=3)).isoformat())
    problem = assert_problem(
        api.identify(RED, device_answer=json.dumps(future)), 422, "invalid-device-answer"
    )
    assert "clock" in problem["detail"]


def test_bundle_files_unchanged_by_package(api: Api) -> None:
    bundle = load_bundle(api.context.host.current.bundle.path)
    assert bundle.manifest.version == "tiny-1"
    assert solid_image_bytes(RED)
