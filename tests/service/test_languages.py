"""Every officer-facing text in en, fr and es (issue 14): problem ``title`` and ``detail``, the
decision's ``explanation``, ``caveat`` and guidance. Each error and decision kind is sent with
each language; a French or Spanish answer must not contain English."""

from __future__ import annotations

import ast
import io
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.labels import Label
from service.app import create_app
from service.keys import create_key
from service.problems import PROBLEM_TEXTS_FILE
from service.settings import Settings
from tests.conftest import REPO_ROOT
from tests.factories import (
    BLUE,
    MAGENTA,
    RED,
    blank_image_bytes,
    make_tiny_bundle,
    solid_image_bytes,
)

ENGLISH_ONLY = frozenset(
    [
        "the",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "and",
        "or",
        "with",
        "without",
        "this",
        "that",
        "these",
        "those",
        "not",
        "your",
        "you",
        "please",
        "send",
        "retry",
        "try",
        "again",
        "wait",
        "only",
        "must",
        "cannot",
        "can",
        "could",
        "would",
        "should",
        "there",
        "which",
        "what",
        "when",
        "where",
        "than",
        "then",
        "into",
        "from",
        "for",
        "of",
        "to",
        "too",
        "by",
        "it",
        "its",
        "has",
        "have",
        "will",
        "image's",
        "request",
        "key",
        "limit",
        "limits",
        "found",
        "unknown",
        "invalid",
        "missing",
        "allowed",
        "denied",
        "shortly",
        "busy",
        "failed",
        "probably",
        "refer",
        "retake",
        "blank",
        "blurred",
        "dark",
        "bright",
        "small",
        "likely",
        "confident",
        "none",
        "unlike",
        "trained",
        "model",
        "appendix",
        "listed",
        "group",
        "species",
        "confirmed",
        "origin",
    ]
)
"""Words that are English and neither French nor Spanish (``image``, ``photo``, ``expert``,
``material``, ``error``, country codes and scientific names are not in the list)."""

LANGUAGES = ("fr", "es")
GROUP_LABELS = (
    Label(0, "ivory", "Ivory (elephant or walrus)", "ivory-elephant-walrus", "cites"),
    Label(1, "ceramic", "Ceramic or porcelain", "ceramic-porcelain", "lookalike"),
    Label(2, "rosewood", "Indian rosewood", "dalbergia-latifolia", "cites"),
)


def english_words(text: str) -> list[str]:
    """The English-only words in ``text`` (scientific names in parentheses ignored)."""
    stripped = re.sub(r"\([A-Z][a-z]+ [a-z]+\)", "", text)
    stripped = re.sub(r"\b[A-Z][a-z]+-[A-Z][a-z]+\b", "", stripped)  # header names: Retry-After
    stripped = re.sub(r"\{[a-z_]+\}", "", stripped)  # placeholders of the text files
    return [w for w in re.findall(r"[A-Za-z']+", stripped) if w.lower() in ENGLISH_ONLY]


def test_the_detector_finds_english() -> None:
    assert english_words("The image is blank: retake the photo") == [
        "The",
        "is",
        "blank",
        "retake",
        "the",
    ]
    assert english_words("La photo ne peut pas être jugée (Loxodonta africana)") == []


def _slugs_in_source() -> set[str]:
    """Every literal problem slug the service raises (``ProblemError(status, "slug", ...)``)."""
    slugs: set[str] = set()
    for path in (REPO_ROOT / "service").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", "")) == "ProblemError"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                slugs.add(node.args[1].value)
            if isinstance(node, ast.Tuple) and len(node.elts) == 2:
                first = node.elts[0]
                if (
                    isinstance(first, ast.Constant)
                    and isinstance(first.value, str)
                    and first.value.endswith("-image")
                ):
                    slugs.add(first.value)
    return slugs


def test_every_problem_slug_has_french_and_spanish_texts() -> None:
    texts = json.loads(PROBLEM_TEXTS_FILE.read_text(encoding="utf-8"))
    slugs = _slugs_in_source() - {"invalid-permit"}  # localised where it is made
    assert len(slugs) > 25
    for language in LANGUAGES:
        missing = sorted(slugs - set(texts[language]))
        assert not missing, f"{language}: no texts for {missing}"
        for slug, (title, detail) in texts[language].items():
            assert not english_words(title + " " + detail), (language, slug)


def test_explanation_texts_have_no_english() -> None:
    texts = json.loads((REPO_ROOT / "service/data/explanations.json").read_text("utf-8"))
    for language in LANGUAGES:
        assert set(texts[language]) == set(texts["en"])
        for key, value in texts[language].items():
            assert not english_words(value), (language, key, value)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    # an OOD model (magenta stays in the domain at threshold 30): look-alike answers are given
    # only after the OOD check has passed
    bundle = make_tiny_bundle(
        tmp_path_factory.mktemp("w"),
        version="tiny-lang",
        labels=GROUP_LABELS,
        with_ood=True,
        ood_threshold=30.0,
    )
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        bundle_dir=bundle,
        onnx_threads=1,
        decode_workers=1,
        max_upload_bytes=300_000,
    )
    application = create_app(settings)
    with TestClient(application, raise_server_exceptions=False) as client:
        keys = {}
        with application.state.context.sessions() as session:
            for role in ("officer", "admin"):
                keys[role], _ = create_key(session, f"test-{role}", role)
        yield client, keys


def _scan() -> bytes:
    rng = np.random.default_rng(0)
    pixels = np.full((300, 400, 3), 250, dtype=np.float64)
    pixels[60:200, 50:250] = (235, 140, 50)
    pixels[120:240, 200:330] = (40, 90, 200)
    pixels[100:130, 80:300] = (60, 170, 90)
    pixels += rng.normal(0, 4, pixels.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _error_requests(keys: dict[str, str]) -> dict[str, dict[str, Any]]:
    officer = {"Authorization": f"Bearer {keys['officer']}"}
    image = solid_image_bytes(RED)
    post = "/v1/identifications"

    def upload(data: bytes, name: str = "x.png", **fields: str) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": post,
            "headers": officer,
            "files": {"image": (name, data, "image/png")},
            "data": fields,
        }

    return {
        "no-key": {"method": "GET", "url": "/v1/identifications"},
        "bad-key": {
            "method": "GET",
            "url": "/v1/identifications",
            "headers": {"Authorization": "Bearer cv_00000000_wrong"},
        },
        "forbidden": {"method": "POST", "url": "/v1/models/tiny-lang/activate", "headers": officer},
        "not-found": {"method": "GET", "url": "/v1/identifications/nope", "headers": officer},
        "no-route": {"method": "GET", "url": "/v1/nothing-here", "headers": officer},
        "method": {"method": "DELETE", "url": "/v1/taxa", "headers": officer},
        "validation": upload(image, top_k="0"),
        "origin": upload(image, origin_country="XX"),
        "empty-image": upload(b""),
        "not-an-image": upload(b"plain text, not an image", "notes.png"),
        "corrupt-image": upload(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64),
        "too-large": upload(b"\x89PNG\r\n\x1a\n" + bytes(400_000)),
        "taxon": {"method": "GET", "url": "/v1/taxa/no-such-taxon", "headers": officer},
    }


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_error_answers_in_the_callers_language(
    app: tuple[TestClient, dict[str, str]], language: str
) -> None:
    client, keys = app
    for name, request in _error_requests(keys).items():
        headers = {**request.pop("headers", {}), "Accept-Language": language}
        response = client.request(headers=headers, **request)
        assert response.status_code >= 400, (name, response.status_code)
        body = response.json()
        text = f"{body['title']} {body['detail']}"
        assert not english_words(text), (name, language, body)
        english = client.request(headers={**headers, "Accept-Language": "en"}, **request).json()
        assert english["detail"] != body["detail"], (name, language)


def _identify(client: TestClient, key: str, data: bytes, language: str) -> dict[str, Any]:
    response = client.post(
        "/v1/identifications",
        headers={"Authorization": f"Bearer {key}", "Accept-Language": language},
        files={"image": ("x.png", data, "image/png")},
    )
    assert response.status_code == 201, response.text
    assert response.headers["Content-Language"] == language
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_decision_kind_answers_in_the_callers_language(
    app: tuple[TestClient, dict[str, str]], language: str
) -> None:
    client, keys = app
    images = {
        "taxon": solid_image_bytes(RED),
        "lookalike": solid_image_bytes(BLUE),
        "uncertain": solid_image_bytes(MAGENTA),
        "outside_training_domain": _scan(),
        "unusable_image": blank_image_bytes((230, 215, 180)),
    }
    for kind, data in images.items():
        body = _identify(client, keys["officer"], data, language)
        decision = body["decision"]
        assert decision["kind"] == kind
        english = _identify(client, keys["officer"], data, "en")["decision"]
        texts = [
            decision["explanation"],
            decision.get("caveat") or "",
            body["guidance"]["title"],
            body["guidance"]["text"],
        ]
        for text in texts:
            assert not english_words(text), (kind, language, text)
        assert decision["explanation"] != english["explanation"]
        if kind == "taxon":  # the ivory group: the caveat names its members
            assert decision["caveat"] and "Odobenus rosmarus" in decision["caveat"]
            assert english["caveat"] and "walrus" in english["caveat"]
