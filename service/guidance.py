"""Guidance texts for officers, kept as data (``service/data/guidance.json``) in en, fr, es.

Texts are keyed by decision kind and appendix (``I``, ``II``, ``III`` or ``none``); the language
comes from the ``Accept-Language`` header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.vocabulary import DECISION_KINDS

LANGUAGES: tuple[str, ...] = ("en", "fr", "es")
DEFAULT_LANGUAGE = "en"
GUIDANCE_FILE = Path(__file__).resolve().parent / "data" / "guidance.json"
_APPENDICES = ("I", "II", "III", "none")


class GuidanceError(ValueError):
    """The guidance file is malformed (the message names the file and entry)."""


@dataclass(frozen=True)
class Guidance:
    """One piece of guidance in one language."""

    language: str
    title: str
    text: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"language": self.language, "title": self.title, "text": self.text}


class GuidanceBook:
    """All guidance texts, validated when loaded."""

    def __init__(self, entries: dict[tuple[str, str, str], Guidance]) -> None:
        self._entries = entries

    @classmethod
    def load(cls, path: Path = GUIDANCE_FILE) -> GuidanceBook:
        """Read and validate a guidance file: every kind needs a ``none`` entry and every entry
        a title and text in every language."""
        try:
            raw: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise GuidanceError(f"{path}: cannot read guidance: {exc}") from exc
        entries: dict[tuple[str, str, str], Guidance] = {}
        for kind in DECISION_KINDS:
            by_appendix = raw.get(kind)
            if not isinstance(by_appendix, dict) or "none" not in by_appendix:
                raise GuidanceError(f"{path}: '{kind}' needs at least a 'none' entry")
            for appendix, by_lang in by_appendix.items():
                where = f"{path}: {kind}/{appendix}"
                if appendix not in _APPENDICES:
                    raise GuidanceError(f"{where}: appendix must be one of {_APPENDICES}")
                for lang in LANGUAGES:
                    item = by_lang.get(lang) if isinstance(by_lang, dict) else None
                    if not isinstance(item, dict) or not item.get("title") or not item.get("text"):
                        raise GuidanceError(f"{where}/{lang}: needs a non-empty title and text")
                    entries[(kind, appendix, lang)] = Guidance(
                        lang, str(item["title"]), str(item["text"])
                    )
        return cls(entries)

    def to_dict(self) -> dict[str, dict[str, dict[str, dict[str, str]]]]:
        """Every text as ``{kind: {appendix: {language: {title, text}}}}`` (the file's shape),
        for the offline package; :meth:`lookup`'s fallbacks apply to it as well."""
        result: dict[str, dict[str, dict[str, dict[str, str]]]] = {}
        for (kind, appendix, lang), item in self._entries.items():
            by_lang = result.setdefault(kind, {}).setdefault(appendix, {})
            by_lang[lang] = {"title": item.title, "text": item.text}
        return result

    def lookup(self, kind: str, appendix: str | None, language: str) -> Guidance:
        """Guidance for a decision kind and appendix, falling back to the kind's ``none`` entry
        and to English."""
        lang = language if language in LANGUAGES else DEFAULT_LANGUAGE
        kind = kind if kind in DECISION_KINDS else "uncertain"
        for key in ((kind, appendix or "none", lang), (kind, "none", lang)):
            if key in self._entries:
                return self._entries[key]
        return self._entries[(kind, "none", DEFAULT_LANGUAGE)]


def negotiate_language(header: str | None, available: tuple[str, ...] = LANGUAGES) -> str:
    """The best of ``available`` for an ``Accept-Language`` header (q-values honoured)."""
    if not header:
        return DEFAULT_LANGUAGE
    choices: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")):
        fields = [f.strip() for f in part.split(";")]
        tag = fields[0].lower()
        if not tag:
            continue
        quality = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        choices.append((-quality, position, tag))
    for _q, _pos, tag in sorted(choices):
        if tag == "*":
            return DEFAULT_LANGUAGE
        primary = tag.split("-")[0]
        if primary in available:
            return primary
    return DEFAULT_LANGUAGE
