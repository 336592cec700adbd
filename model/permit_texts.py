"""Officer-facing words of the permit cross-check, in the three CITES working languages.

:mod:`model.permits` produces findings as a code plus language-independent parameters (so a
stored verification can be read back in any language); :func:`render` turns one into a sentence.
Parameters whose name ends in ``appendix`` hold an appendix value (``I``, ``II``, ``III``,
``not_listed``) and are written out in the reader's language; ``suggested_common`` (names by
language) replaces ``suggested_name`` for product groups and materials, which have no scientific
name; ``probability`` is a fraction written with two decimals, rounded down (0.999 is 0.99).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

LANGUAGES: tuple[str, ...] = ("en", "fr", "es")

_APPENDIX_WORDS: dict[str, dict[str, str]] = {
    "en": {"I": "Appendix I", "II": "Appendix II", "III": "Appendix III", "none": "not listed"},
    "fr": {"I": "Annexe I", "II": "Annexe II", "III": "Annexe III", "none": "non inscrit"},
    "es": {
        "I": "Apéndice I",
        "II": "Apéndice II",
        "III": "Apéndice III",
        "none": "no incluido en los Apéndices",
    },
}

TEXTS: dict[str, dict[str, str]] = {
    # ---- permit checks -------------------------------------------------------------------
    "appendix_matches": {
        "en": "declared {declared_appendix} for {name} from {origin}; the taxonomy says "
        "{applicable_appendix}",
        "fr": "{declared_appendix} déclarée pour {name} de {origin} ; la taxonomie indique "
        "{applicable_appendix}",
        "es": "{declared_appendix} declarado para {name} de {origin}; la taxonomía indica "
        "{applicable_appendix}",
    },
    "appendix_contradicts": {
        "en": "declared {declared_appendix}, but {name} from {origin} is "
        "{applicable_appendix} ({rule})",
        "fr": "{declared_appendix} déclarée, mais pour {name} de {origin} la taxonomie indique "
        "{applicable_appendix} ({rule})",
        "es": "declarado {declared_appendix}, pero para {name} de {origin} la taxonomía indica "
        "{applicable_appendix} ({rule})",
    },
    "appendix_needs_origin": {
        "en": "the appendix of {name} depends on the country of origin (up to "
        "{applicable_appendix}); declare the country of origin to check {declared_appendix}",
        "fr": "l'annexe de {name} dépend du pays d'origine (jusqu'à {applicable_appendix}) ; "
        "déclarez le pays d'origine pour vérifier {declared_appendix}",
        "es": "el apéndice de {name} depende del país de origen (hasta {applicable_appendix}); "
        "declare el país de origen para verificar {declared_appendix}",
    },
    "appendix_needs_species": {
        "en": "{name} is not listed as a whole; it includes taxa up to {applicable_appendix}: "
        "declare the species to check {declared_appendix}",
        "fr": "{name} n'est pas inscrit en entier ; il comprend des taxons jusqu'à "
        "{applicable_appendix} : déclarez l'espèce pour vérifier {declared_appendix}",
        "es": "{name} no está incluido como un todo; comprende taxones hasta "
        "{applicable_appendix}: declare la especie para verificar {declared_appendix}",
    },
    "listing_unverified": {
        "en": "caution: the taxonomy row for {name} ({row}) is recalled, not verified against "
        "a source; confirm the listing in the CITES Checklist (Species+) before acting on it",
        "fr": "attention : la ligne de taxonomie de {name} ({row}) est de mémoire, non "
        "vérifiée sur une source ; confirmez l'inscription dans la Liste CITES (Species+) "
        "avant d'agir",
        "es": "atención: la fila de taxonomía de {name} ({row}) es de memoria, no verificada "
        "con una fuente; confirme la inclusión en la Lista CITES (Species+) antes de actuar",
    },
    "taxon_unknown": {
        "en": "the declared taxon {declared_name} is not in this service's taxonomy; its "
        "appendix cannot be checked here",
        "fr": "le taxon déclaré {declared_name} n'est pas dans la taxonomie de ce service ; "
        "son annexe ne peut pas être vérifiée ici",
        "es": "el taxón declarado {declared_name} no está en la taxonomía de este servicio; "
        "su apéndice no puede verificarse aquí",
    },
    "valid": {
        "en": "valid from {valid_from} until {valid_until} (checked on {today})",
        "fr": "valable du {valid_from} au {valid_until} (vérifié le {today})",
        "es": "válido del {valid_from} al {valid_until} (verificado el {today})",
    },
    "valid_until": {
        "en": "valid until {valid_until} (checked on {today})",
        "fr": "valable jusqu'au {valid_until} (vérifié le {today})",
        "es": "válido hasta el {valid_until} (verificado el {today})",
    },
    "expired": {
        "en": "the permit expired on {valid_until} (checked on {today})",
        "fr": "le permis a expiré le {valid_until} (vérifié le {today})",
        "es": "el permiso venció el {valid_until} (verificado el {today})",
    },
    "not_yet_valid": {
        "en": "the permit is valid only from {valid_from} (checked on {today})",
        "fr": "le permis n'est valable qu'à partir du {valid_from} (vérifié le {today})",
        "es": "el permiso solo es válido desde el {valid_from} (verificado el {today})",
    },
    "purpose_allowed": {
        "en": "purpose {purpose_code} ({purpose}) with source {source_code}: allowed "
        "({applicable_appendix})",
        "fr": "but {purpose_code} ({purpose}) avec la source {source_code} : admis "
        "({applicable_appendix})",
        "es": "propósito {purpose_code} ({purpose}) con origen {source_code}: permitido "
        "({applicable_appendix})",
    },
    "purpose_commercial_appendix_i": {
        "en": "purpose T (commercial) is not allowed for {applicable_appendix} specimens of "
        "source {source_code}: Appendix I specimens may be traded commercially only from "
        "registered operations (source D)",
        "fr": "le but T (commercial) n'est pas admis pour des spécimens de l'"
        "{applicable_appendix} de source {source_code} : le commerce de spécimens de "
        "l'Annexe I n'est admis que depuis des établissements enregistrés (source D)",
        "es": "el propósito T (comercial) no está permitido para especímenes del "
        "{applicable_appendix} de origen {source_code}: los especímenes del Apéndice I solo "
        "pueden comerciarse desde establecimientos registrados (origen D)",
    },
    "purpose_pre_convention": {
        "en": "purpose T (commercial) for {applicable_appendix} with source O (pre-Convention): "
        "allowed only with a pre-Convention certificate; check it",
        "fr": "but T (commercial) pour l'{applicable_appendix} avec la source O (pré-"
        "Convention) : admis seulement avec un certificat pré-Convention ; vérifiez-le",
        "es": "propósito T (comercial) para el {applicable_appendix} con origen O (pre-"
        "Convención): permitido solo con un certificado pre-Convención; verifíquelo",
    },
    # ---- image against permit -----------------------------------------------------------
    "image_matches": {
        "en": "declared {declared_name}, {declared_appendix}; the image suggests "
        "{suggested_name} ({probability}), {suggested_appendix}",
        "fr": "déclaré {declared_name}, {declared_appendix} ; l'image suggère "
        "{suggested_name} ({probability}), {suggested_appendix}",
        "es": "declarado {declared_name}, {declared_appendix}; la imagen sugiere "
        "{suggested_name} ({probability}), {suggested_appendix}",
    },
    "image_matches_higher": {
        "en": "declared {declared_name}, {declared_appendix}; the image suggests "
        "{suggested_name} ({probability}), a higher taxon or product group that includes it: "
        "the image cannot confirm the species{also_includes}",
        "fr": "déclaré {declared_name}, {declared_appendix} ; l'image suggère "
        "{suggested_name} ({probability}), un taxon supérieur ou un groupe de produits qui "
        "l'inclut : l'image ne peut pas confirmer l'espèce{also_includes}",
        "es": "declarado {declared_name}, {declared_appendix}; la imagen sugiere "
        "{suggested_name} ({probability}), un taxón superior o grupo de productos que lo "
        "incluye: la imagen no puede confirmar la especie{also_includes}",
    },
    "image_differs": {
        "en": "declared {declared_name}, {declared_appendix}; the image suggests "
        "{suggested_name} ({probability}), {suggested_appendix}{includes}",
        "fr": "déclaré {declared_name}, {declared_appendix} ; l'image suggère "
        "{suggested_name} ({probability}), {suggested_appendix}{includes}",
        "es": "declarado {declared_name}, {declared_appendix}; la imagen sugiere "
        "{suggested_name} ({probability}), {suggested_appendix}{includes}",
    },
    "image_lookalike": {
        "en": "declared {declared_name}, {declared_appendix}; the image suggests a look-alike "
        "material, {suggested_name} ({probability}), not the declared CITES taxon",
        "fr": "déclaré {declared_name}, {declared_appendix} ; l'image suggère un matériau "
        "d'apparence semblable, {suggested_name} ({probability}), pas le taxon CITES déclaré",
        "es": "declarado {declared_name}, {declared_appendix}; la imagen sugiere un material "
        "parecido, {suggested_name} ({probability}), no el taxón CITES declarado",
    },
    "image_unknown_declared": {
        "en": "declared {declared_name} (not in this service's taxonomy); the image suggests "
        "{suggested_name} ({probability}), {suggested_appendix}: compare by an expert",
        "fr": "déclaré {declared_name} (absent de la taxonomie de ce service) ; l'image "
        "suggère {suggested_name} ({probability}), {suggested_appendix} : à comparer par un "
        "expert",
        "es": "declarado {declared_name} (no está en la taxonomía de este servicio); la imagen "
        "sugiere {suggested_name} ({probability}), {suggested_appendix}: que lo compare un "
        "experto",
    },
    "image_uncertain": {
        "en": "declared {declared_name}, {declared_appendix}; the image is not conclusive "
        "({model_reason}): refer to an expert",
        "fr": "déclaré {declared_name}, {declared_appendix} ; l'image n'est pas concluante "
        "({model_reason}) : consultez un expert",
        "es": "declarado {declared_name}, {declared_appendix}; la imagen no es concluyente "
        "({model_reason}): consulte a un experto",
    },
    "reason_uncertain": {
        "en": "the model is not confident of any class",
        "fr": "le modèle n'est sûr d'aucune classe",
        "es": "el modelo no está seguro de ninguna clase",
    },
    "reason_outside_training_domain": {
        "en": "the image is unlike the images the model was taught",
        "fr": "l'image ne ressemble pas aux images apprises par le modèle",
        "es": "la imagen no se parece a las imágenes con las que se entrenó el modelo",
    },
    "reason_unreadable": {
        "en": "the image could not be read",
        "fr": "l'image n'a pas pu être lue",
        "es": "no se pudo leer la imagen",
    },
    "includes_stricter": {
        "en": ", which includes {strict_appendix} {strict_names}",
        "fr": ", qui comprend {strict_names} ({strict_appendix})",
        "es": ", que incluye {strict_names} ({strict_appendix})",
    },
    "includes_also": {
        "en": "; it also includes {strict_appendix} {strict_names}",
        "fr": " ; il comprend aussi {strict_names} ({strict_appendix})",
        "es": "; también incluye {strict_names} ({strict_appendix})",
    },
    # ---- declared data refused (422) ----------------------------------------------------
    "field_required": {
        "en": "{field}: this field is required",
        "fr": "{field} : ce champ est obligatoire",
        "es": "{field}: este campo es obligatorio",
    },
    "field_too_long": {
        "en": "{field}: at most {limit} characters",
        "fr": "{field} : {limit} caractères au plus",
        "es": "{field}: como máximo {limit} caracteres",
    },
    "unknown_code": {
        "en": "{field}: unknown code {value!r}; allowed: {allowed} ({source})",
        "fr": "{field} : code inconnu {value!r} ; codes admis : {allowed} ({source})",
        "es": "{field}: código desconocido {value!r}; códigos admitidos: {allowed} ({source})",
    },
    "unknown_country": {
        "en": "{field}: {value!r} is not an ISO 3166-1 alpha-2 country code (two letters, "
        "e.g. KE for Kenya)",
        "fr": "{field} : {value!r} n'est pas un code pays ISO 3166-1 alpha-2 (deux lettres, "
        "p. ex. KE pour le Kenya)",
        "es": "{field}: {value!r} no es un código de país ISO 3166-1 alfa-2 (dos letras, "
        "p. ej. KE para Kenia)",
    },
    "bad_date": {
        "en": "{field}: {value!r} is not a date (YYYY-MM-DD)",
        "fr": "{field} : {value!r} n'est pas une date (AAAA-MM-JJ)",
        "es": "{field}: {value!r} no es una fecha (AAAA-MM-DD)",
    },
    "dates_reversed": {
        "en": "valid_from ({valid_from}) is after valid_until ({valid_until})",
        "fr": "valid_from ({valid_from}) est postérieure à valid_until ({valid_until})",
        "es": "valid_from ({valid_from}) es posterior a valid_until ({valid_until})",
    },
    "bad_quantity": {
        "en": "{field}: {value!r} is not a positive number",
        "fr": "{field} : {value!r} n'est pas un nombre positif",
        "es": "{field}: {value!r} no es un número positivo",
    },
    "quantity_without_unit": {
        "en": "unit: give the unit of the quantity (e.g. KIL, PCS, MTQ)",
        "fr": "unit : indiquez l'unité de la quantité (p. ex. KIL, PCS, MTQ)",
        "es": "unit: indique la unidad de la cantidad (p. ej. KIL, PCS, MTQ)",
    },
    "image_number": {
        "en": "image {n}: {reason}",
        "fr": "image {n} : {reason}",
        "es": "imagen {n}: {reason}",
    },
    "invalid_permit": {
        "en": "The declared permit data are not valid: {details}",
        "fr": "Les données déclarées du permis ne sont pas valides : {details}",
        "es": "Los datos declarados del permiso no son válidos: {details}",
    },
}

TITLES: dict[str, dict[str, str]] = {
    "image_number": {
        "en": "image {n}: {reason}",
        "fr": "image {n} : {reason}",
        "es": "imagen {n}: {reason}",
    },
    "invalid_permit": {
        "en": "Invalid permit data",
        "fr": "Données de permis non valides",
        "es": "Datos de permiso no válidos",
    },
}


_NESTED = {"includes": "includes_stricter", "also_includes": "includes_also"}
"""Parameters holding a sub-sentence (a mapping of its own parameters, or empty)."""


def appendix_words(value: str | None, language: str) -> str:
    """``Appendix II`` / ``Annexe II`` / ``Apéndice II``; ``not listed`` for ``not_listed``."""
    words = _APPENDIX_WORDS.get(language, _APPENDIX_WORDS["en"])
    if value in ("I", "II", "III"):
        return words[value]
    return words["none"]


def render(code: str, params: Mapping[str, object], language: str) -> str:
    """The sentence for finding ``code`` in ``language`` (English when not en/fr/es)."""
    texts = TEXTS[code]
    template = texts.get(language) or texts["en"]
    values: dict[str, object] = {}
    common = params.get("suggested_common")
    kind = params.get("model_kind")
    for key, value in params.items():
        if (
            key == "model_reason"
            and language != "en"
            and isinstance(kind, str)
            and f"reason_{kind}" in TEXTS
        ):  # the model's and the decoder's own explanations are English
            values[key] = render(f"reason_{kind}", {}, language)
        elif key == "suggested_name" and isinstance(common, Mapping) and common.get(language):
            values[key] = common[language]  # a product group or material: its name, translated
        elif key.endswith("appendix"):
            values[key] = appendix_words(value if isinstance(value, str) else None, language)
        elif key == "probability" and isinstance(value, float | int):
            values[key] = f"{math.floor(float(value) * 100) / 100:.2f}"  # never rounds up to 1
        elif key in _NESTED and isinstance(value, Mapping):
            values[key] = render(_NESTED[key], value, language) if value else ""
        else:
            values[key] = value
    for key in _NESTED:
        values.setdefault(key, "")
    return template.format(**values)
