"""Multi-view identification over HTTP (``POST /v1/identifications:views``): up to six photos of
one object, each stored and answered, fused into one answer (model.fusion); bad photos are
named and nothing is stored; the feedback export carries every photo."""

from __future__ import annotations

import csv
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from model.fusion import MAX_VIEWS
from service.tables import Identification, IdentificationView, StoredImage
from tests import images
from tests.factories import (
    BLUE,
    GRAY,
    MAGENTA,
    RED,
    blank_image_bytes,
    make_tiny_bundle,
    solid_image_bytes,
)
from tests.service.test_api import Api, assert_problem, start_api

SIZES = ((320, 240), (300, 260), (280, 280), (340, 230), (310, 250), (290, 270), (330, 240))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-1 with its OOD model at the default threshold: red, blue and green photos are in
    the domain, magenta is outside it."""
    root = tmp_path_factory.mktemp("weights")
    make_tiny_bundle(root, version="tiny-1", with_ood=True)
    return root


@pytest.fixture(scope="module")
def api(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from start_api(weights, tmp_path_factory.mktemp("data"))


def photos(*colors: tuple[int, int, int]) -> list[bytes]:
    """One photo per colour, each of another size (so each is a different file)."""
    return [solid_image_bytes(c, size=SIZES[i]) for i, c in enumerate(colors)]


def post_views(
    api: Api, bodies: list[bytes], role: str = "officer", language: str = "en", **fields: Any
) -> httpx.Response:
    return api.client.post(
        "/v1/identifications:views",
        headers=api.h(role, **{"Accept-Language": language}),
        files=[("images", (f"view{i}.png", b, "image/png")) for i, b in enumerate(bodies)],
        data={k: str(v) for k, v in fields.items()},
    )


def counts(api: Api) -> tuple[int, int, int, int]:
    """Identification rows, image rows, view rows and image files."""
    context = api.context
    with context.sessions() as session:
        rows = (
            session.query(Identification).count(),
            session.query(StoredImage).count(),
            session.query(IdentificationView).count(),
        )
    files = sum(1 for p in context.store.root.rglob("*") if p.is_file())
    return (*rows, files)


def test_two_photos_of_ivory_are_one_stored_answer_with_both_photos(api: Api) -> None:
    bodies = photos(RED, RED)
    response = post_views(api, bodies, origin_country="KE", case_ref="SEIZ-MV")
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/identifications/{body['id']}"
    decision = body["decision"]
    assert decision["kind"] == "taxon" and decision["label"] == "ivory"
    assert decision["appendix"] == "I" and body["case_ref"] == "SEIZ-MV"
    assert body["fusion"]["views_used"] == [0, 1] and body["fusion"]["ood"] == "max"
    assert [v["position"] for v in body["views"]] == [0, 1]
    assert all(v["used"] and v["decision"]["kind"] == "taxon" for v in body["views"])
    assert body["image"]["sha256"] == body["views"][0]["image"]["sha256"]
    for position, data in enumerate(bodies):
        url = body["views"][position]["image"]["url"]
        assert url.endswith(f"/image?view={position}")
        stored = api.client.get(url, headers=api.h("trainer"))
        assert stored.status_code == 200 and stored.content == data
    again = api.client.get(f"/v1/identifications/{body['id']}", headers=api.h("officer")).json()
    assert again["views"] == body["views"] and again["decision"]["kind"] == "taxon"
    heatmap = api.client.get(body["views"][1]["heatmap_url"], headers=api.h("officer"))
    assert heatmap.status_code == 200 and heatmap.headers["content-type"] == "image/png"
    missing = api.client.get(
        f"/v1/identifications/{body['id']}/image?view=2", headers=api.h("officer")
    )
    assert_problem(missing, 404, "not-found")


def test_photos_that_disagree_are_uncertain_and_never_an_all_clear(api: Api) -> None:
    """Ivory on one photo, ceramic on the other: refer to an expert."""
    body = post_views(api, photos(RED, BLUE)).json()
    assert [v["decision"]["kind"] for v in body["views"]] == ["taxon", "lookalike"]
    assert body["decision"]["kind"] == "uncertain"
    assert body["decision"]["refer_to_expert"] is True
    # each photo has its own heat map (not the first one's, cached)
    maps = [api.client.get(v["heatmap_url"], headers=api.h("officer")) for v in body["views"]]
    assert [m.status_code for m in maps] == [200, 200]
    assert maps[0].content != maps[1].content


def test_one_photo_outside_the_domain_takes_the_all_clear_away(api: Api) -> None:
    lookalike = post_views(api, photos(BLUE, BLUE)).json()
    assert lookalike["decision"]["kind"] == "lookalike"
    body = post_views(api, photos(BLUE, BLUE, MAGENTA)).json()
    assert body["views"][2]["decision"]["kind"] == "outside_training_domain"
    assert body["decision"]["kind"] == "outside_training_domain"
    assert body["fusion"]["ood_score"] == body["views"][2]["ood_score"]


def test_an_unusable_photo_is_left_out_and_named(api: Api) -> None:
    body = post_views(api, [blank_image_bytes(GRAY), *photos(RED)]).json()
    assert body["views"][0]["used"] is False
    assert body["views"][0]["decision"]["kind"] == "unusable_image"
    assert body["fusion"]["views_excluded"] == {"0": "unusable_image"}
    assert body["decision"]["kind"] == "taxon"
    only_blank = post_views(
        api, [blank_image_bytes(GRAY), blank_image_bytes(GRAY, size=(600, 400))]
    ).json()
    assert only_blank["decision"]["kind"] == "unusable_image"
    assert only_blank["top_k"] == [] and only_blank["fusion"]["views_used"] == []


def test_a_damaged_photo_refuses_the_request_names_it_and_stores_nothing(api: Api) -> None:
    before = counts(api)
    response = post_views(api, [*photos(RED), images.truncated_png(), *photos(RED)])
    body = assert_problem(response, 422, "corrupt-image")
    assert body["detail"].startswith("Photo 2 of 3:")
    assert body["errors"][0]["loc"] == ["body", "images", 1]
    assert counts(api) == before
    french = post_views(api, [*photos(RED), images.truncated_png()], language="fr")
    assert assert_problem(french, 422, "corrupt-image")["detail"].startswith("Photo 2 sur 2 : ")
    spanish = post_views(api, [images.truncated_png(), *photos(RED)], language="es")
    assert assert_problem(spanish, 422, "corrupt-image")["detail"].startswith("Foto 1 de 2: ")


def test_more_than_six_photos_is_413_in_the_callers_language(api: Api) -> None:
    before = counts(api)
    response = post_views(api, photos(*([RED] * (MAX_VIEWS + 1))), language="fr")
    body = assert_problem(response, 413, "too-many-views")
    assert body["title"] == "Trop de photos"
    assert counts(api) == before
    assert post_views(api, photos(*([RED] * MAX_VIEWS))).status_code == 201


def test_no_photo_and_roles(api: Api) -> None:
    empty = api.client.post("/v1/identifications:views", headers=api.h("officer"), data={"x": "1"})
    assert_problem(empty, 422, "validation-error")
    assert_problem(post_views(api, photos(RED), role="trainer"), 403, "forbidden")
    assert post_views(api, photos(RED), role="scanner").status_code == 201


def test_the_export_has_every_photo_with_the_objects_label(api: Api) -> None:
    body = post_views(api, photos(RED, RED, BLUE), case_ref="SEIZ-EXPORT").json()
    feedback = api.client.post(
        f"/v1/identifications/{body['id']}/feedback",
        headers=api.h("officer"),
        json={"verdict": "correct", "label": "ivory"},
    )
    assert feedback.status_code == 201
    archive = api.client.get("/v1/feedback/export", headers=api.h("trainer")).content
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        manifest = tar.extractfile("manifest.csv")
        assert manifest is not None
        rows = list(csv.DictReader(io.TextIOWrapper(manifest, encoding="utf-8")))
        names = set(tar.getnames())
    mine = [r for r in rows if r["source"] == f"feedback:{body['id']}"]
    shas = [v["image"]["sha256"] for v in body["views"]]
    assert [Path(r["path"]).stem for r in mine] == shas
    assert {r["label"] for r in mine} == {"ivory"}
    assert {r["case_id"] for r in mine} == {"SEIZ-EXPORT"}
    assert all(r["path"] in names for r in mine)


def test_the_pipeline_refuses_no_photo_and_too_many(api: Api) -> None:
    """Callers other than the route (which FastAPI validates) get the same problems."""
    from service.identify import IdentifyOptions
    from service.keys import Principal
    from service.problems import ProblemError

    pipeline = api.context.pipeline
    principal = Principal(key_id=None, name="test", role="officer")
    portal = api.client.portal  # type: ignore[attr-defined]
    with pytest.raises(ProblemError) as none:
        portal.call(pipeline.identify_views, [], IdentifyOptions(), principal)
    assert (none.value.status, none.value.title) == (422, "No photo")
    with pytest.raises(ProblemError) as many:
        portal.call(pipeline.identify_views, photos(*[RED] * 7), IdentifyOptions(), principal)
    assert (many.value.status, many.value.slug) == (413, "too-many-views")
