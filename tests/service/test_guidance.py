"""Guidance texts and language negotiation (service/guidance.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.guidance import (
    GUIDANCE_FILE,
    LANGUAGES,
    GuidanceBook,
    GuidanceError,
    negotiate_language,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "en"),
        ("", "en"),
        ("fr", "fr"),
        ("es-ES,es;q=0.9,en;q=0.8", "es"),
        ("de-DE,fr;q=0.5,es;q=0.8", "es"),
        ("de, it", "en"),
        ("fr;q=0, es;q=0.1", "es"),
        ("FR-ca", "fr"),
        ("*", "en"),
        ("en;q=garbage, fr;q=0.3", "fr"),
    ],
)
def test_accept_language(header: str | None, expected: str) -> None:
    assert negotiate_language(header) == expected


def test_guidance_has_every_kind_and_language() -> None:
    book = GuidanceBook.load()
    for kind in ("taxon", "lookalike", "uncertain", "outside_training_domain"):
        for lang in LANGUAGES:
            g = book.lookup(kind, None, lang)
            assert g.language == lang and g.title and g.text
    assert "Appendix I" in book.lookup("taxon", "I", "en").title
    assert "Annexe II" in book.lookup("taxon", "II", "fr").title
    assert "Apéndice III" in book.lookup("taxon", "III", "es").title
    # unknown appendix falls back to the kind's general entry
    assert book.lookup("lookalike", "I", "en") == book.lookup("lookalike", None, "en")


def test_guidance_file_errors_name_the_entry(tmp_path: Path) -> None:
    raw = json.loads(GUIDANCE_FILE.read_text(encoding="utf-8"))
    del raw["uncertain"]["none"]["es"]
    bad = tmp_path / "guidance.json"
    bad.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(GuidanceError, match=r"uncertain/none/es"):
        GuidanceBook.load(bad)
