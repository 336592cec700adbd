"""Tests for model.taxonomy (loader, validation, look-ups, appendix by origin) and `taxa` CLI."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from model.cli import main
from model.taxonomy import (
    TAXA_COLUMNS,
    Appendix,
    InvalidCountryError,
    TaxonNotFoundError,
    Taxonomy,
    TaxonomyError,
    default_taxonomy,
)

# ---- a small, valid taxonomy written to temporary files ----------------------------------

HEADER = "\t".join(TAXA_COLUMNS)
D = "2026-11-30"


def _row(
    taxon_id: str,
    scientific: str,
    rank: str,
    parent: str,
    en: str,
    appendix: str = "",
    *,
    kind: str = "taxon",
    members: str = "",
    resembles: str = "",
    checked: str = D,
    verification: str = "V",
    synonyms: str = "",
) -> str:
    cells = {
        "id": taxon_id,
        "kind": kind,
        "rank": rank,
        "scientific_name": scientific,
        "parent_id": parent,
        "name_en": en,
        "name_fr": "",
        "name_es": "",
        "synonyms": synonyms,
        "product_types": "",
        "appendix": appendix,
        "annotation": "",
        "members": members,
        "resembles": resembles,
        "status_checked": checked,
        "verification": verification,
        "source": "test",
    }
    return "\t".join(cells[c] for c in TAXA_COLUMNS)


GOOD_ROWS = [
    _row("animalia", "Animalia", "kingdom", "", "animals"),
    _row("mammalia", "Mammalia", "class", "animalia", "mammals"),
    _row("felidae", "Felidae", "family", "mammalia", "cats", "II"),
    _row("panthera-leo", "Panthera leo", "species", "felidae", "lion", "II"),
    _row("felis-catus", "Felis catus", "species", "felidae", "house cat", synonyms="gato"),
    _row("resin", "Resin", "material", "", "resin imitation", kind="lookalike"),
]
POP_HEADER = "taxon_id\tappendix\tcountries\tannotation\tstatus_checked\tverification\tsource"
GOOD_POPS = ["panthera-leo\tI\tIN\tpopulations of India\t2026-11-30\tV\ttest"]


def _write(tmp_path: Path, rows: list[str], pops: list[str] | None = None) -> tuple[Path, Path]:
    taxa = tmp_path / "taxa.tsv"
    taxa.write_text("# comment line\n" + HEADER + "\n" + "\n".join(rows) + "\n", "utf-8")
    populations = tmp_path / "populations.tsv"
    body = GOOD_POPS if pops is None else pops
    populations.write_text(POP_HEADER + "\n" + "\n".join(body) + "\n", "utf-8")
    return taxa, populations


def test_small_file_loads(tmp_path: Path) -> None:
    taxa, _ = _write(tmp_path, GOOD_ROWS)
    taxonomy = Taxonomy.load(taxa)
    assert len(taxonomy) == 6
    assert taxonomy.appendix_for("panthera-leo", "IN").appendix is Appendix.I
    assert taxonomy.appendix_for("felis-catus").appendix is Appendix.II  # inherited


# Each bad file: rows to use (index -> replacement), expected text, expected line number.
# Line 1 is the comment, line 2 the header, so GOOD_ROWS[i] is on line i + 3.
BAD_TAXA = {
    "duplicate id": ({4: _row("panthera-leo", "Felis catus", "species", "felidae", "cat")}, 7),
    "unknown parent": (
        {3: _row("panthera-leo", "Panthera leo", "species", "ursidae", "lion", "II")},
        6,
    ),
    "parent cycle": (
        {
            0: _row("animalia", "Animalia", "kingdom", "felidae", "animals"),
        },
        3,
    ),
    "unknown appendix": (
        {3: _row("panthera-leo", "Panthera leo", "species", "felidae", "lion", "IV")},
        6,
    ),
    "not a date": (
        {4: _row("felis-catus", "Felis catus", "species", "felidae", "cat", checked="2026-13-01")},
        7,
    ),
    "English common name is missing": (
        {4: _row("felis-catus", "Felis catus", "species", "felidae", "")},
        7,
    ),
    "already used by": ({4: _row("felis-catus", "Felis catus", "species", "felidae", "LION")}, 7),
    "must rank above": ({4: _row("felis", "Felis", "genus", "panthera-leo", "small cats")}, 7),
    "unknown verification": (
        {4: _row("felis-catus", "Felis catus", "species", "felidae", "cat", verification="X")},
        7,
    ),
    "must be not_listed": (
        {5: _row("resin", "Resin", "material", "", "resin", "II", kind="lookalike")},
        8,
    ),
    "tab-separated cells": ({4: "felis-catus\ttaxon\tspecies"}, 7),
}


@pytest.mark.parametrize("expected", sorted(BAD_TAXA))
def test_loader_rejects_bad_taxa_file_naming_file_and_line(tmp_path: Path, expected: str) -> None:
    replacements, line = BAD_TAXA[expected]
    rows = [replacements.get(i, row) for i, row in enumerate(GOOD_ROWS)]
    taxa, _ = _write(tmp_path, rows)
    with pytest.raises(TaxonomyError) as info:
        Taxonomy.load(taxa)
    message = str(info.value)
    assert expected in message
    assert message.startswith(f"{taxa}:{line}:"), message
    assert info.value.line == line


def test_cycle_between_two_taxa_is_named(tmp_path: Path) -> None:
    rows = [
        *GOOD_ROWS,
        _row("genus-a", "Genusa", "genus", "genus-b", "a genus"),
        _row("genus-b", "Genusb", "genus", "genus-a", "b genus"),
    ]
    taxa, _ = _write(tmp_path, rows)
    with pytest.raises(TaxonomyError, match=r"taxa\.tsv:9: parent cycle: genus-a -> genus-b"):
        Taxonomy.load(taxa)


BAD_POPS = {
    "not an ISO 3166-1 alpha-2": "panthera-leo\tI\tIN; XX\tx\t2026-11-30\tV\tt",
    "unknown taxon id": "panthera-tigris\tI\tIN\tx\t2026-11-30\tV\tt",
    "unknown appendix": "panthera-leo\tI/II\tIN\tx\t2026-11-30\tV\tt",
    "repeats the taxon's own appendix": "panthera-leo\tII\tIN\tx\t2026-11-30\tV\tt",
    "not a date": "panthera-leo\tI\tIN\tx\tNov 2026\tV\tt",
}


@pytest.mark.parametrize("expected", sorted(BAD_POPS))
def test_loader_rejects_bad_population_rows(tmp_path: Path, expected: str) -> None:
    taxa, pops = _write(tmp_path, GOOD_ROWS, [BAD_POPS[expected]])
    with pytest.raises(TaxonomyError) as info:
        Taxonomy.load(taxa)
    assert expected in str(info.value)
    assert str(info.value).startswith(f"{pops}:2:")


def test_overlapping_population_rows_rejected(tmp_path: Path) -> None:
    rows = [GOOD_POPS[0], "panthera-leo\tnot_listed\tIN; NP\tx\t2026-11-30\tV\tt"]
    taxa, pops = _write(tmp_path, GOOD_ROWS, rows)
    with pytest.raises(TaxonomyError, match=r"country IN already has a row \(line 2\)") as info:
        Taxonomy.load(taxa)
    assert str(info.value).startswith(f"{pops}:3:")


def test_population_on_taxon_without_own_appendix_names_taxa_line(tmp_path: Path) -> None:
    taxa, _ = _write(tmp_path, GOOD_ROWS, ["felis-catus\tI\tIN\tx\t2026-11-30\tV\tt"])
    with pytest.raises(TaxonomyError, match="needs its own appendix") as info:
        Taxonomy.load(taxa)
    assert str(info.value).startswith(f"{taxa}:7:")


def test_missing_file_is_a_taxonomy_error(tmp_path: Path) -> None:
    with pytest.raises(TaxonomyError, match="file not found"):
        Taxonomy.load(tmp_path / "nope.tsv")


# ---- the packaged taxonomy -----------------------------------------------------------------


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return default_taxonomy()


PANGOLINS = [
    "crassicaudata",
    "culionensis",
    "javanica",
    "pentadactyla",
    "gigantea",
    "temminckii",
    "tetradactyla",
    "tricuspis",
]
REQUIRED_IDS = [
    "loxodonta-africana",
    "elephas-maximus",
    "hippopotamus-amphibius",
    "physeter-macrocephalus",
    "monodon-monoceros",
    "odobenus-rosmarus",
    "panthera-tigris",
    "moschus",
    "pantholops-hodgsonii",
    "vicugna-vicugna",
    "eretmochelys-imbricata",
    "crocodylia",
    "pythonidae",
    "varanus",
    "salvator",
    "tupinambis",
    "carcharhinidae",
    "sphyrnidae",
    "carcharhinus-longimanus",
    "rhincodon-typus",
    "mobula",
    "hippocampus",
    "totoaba-macdonaldi",
    "holothuria-fuscogilva",
    "scleractinia",
    "antipatharia",
    "tridacnidae",
    "aliger-gigas",
    "rhinoplax-vigil",
    "dalbergia",
    "dalbergia-nigra",
    "guibourtia-demeusei",
    "pterocarpus-erinaceus",
    "pterocarpus-santalinus",
    "pterocarpus-tinctorius",
    "aquilaria",
    "gyrinops",
    "swietenia-macrophylla",
    "khaya",
    "cedrela",
    "gonystylus",
    "diospyros",
    "afzelia",
    "paubrasilia-echinata",
    # groups and look-alikes: training maps dataset classes to these exact ids
    "ivory-elephant-walrus",
    "ivory-any",
    "pangolin-scales",
    "ceramic-porcelain",
    "bone-non-cites",
    "mammoth-ivory",
    "resin-plastic",
    "tagua-nut",
    "cattle-buffalo-horn",
    "sapele",
    "padauk-pterocarpus",
    "pterocarpus-soyauxii",
    "timber-non-listed",
]


def test_packaged_taxonomy_is_large_and_complete(taxonomy: Taxonomy) -> None:
    assert len(taxonomy) >= 60
    missing = [i for i in REQUIRED_IDS if i not in taxonomy]
    assert not missing
    for taxon in taxonomy:
        assert taxon.common_names["en"]
        assert isinstance(taxon.status_checked, date)
        assert taxon.verification in {"V", "V-old", "V-ind", "R", "std"}


@pytest.mark.parametrize("epithet", PANGOLINS)
def test_all_eight_pangolins_are_manis_in_appendix_i(taxonomy: Taxonomy, epithet: str) -> None:
    taxon = taxonomy.get(f"manis-{epithet}")
    assert taxon.scientific_name == f"Manis {epithet}"
    assert taxon.parent_id == "manis"
    for country in (None, "CN", "NG", "ZA"):
        assert taxonomy.appendix_for(taxon.id, country).appendix is Appendix.I


def test_find_is_case_and_accent_insensitive_and_ranked(taxonomy: Taxonomy) -> None:
    assert taxonomy.find("VICUNA")[0].id == "vicugna-vicugna"
    assert taxonomy.find("éléphant d'Afrique")[0].id == "loxodonta-africana"
    assert taxonomy.find("elefante africano")[0].id == "loxodonta-africana"
    assert taxonomy.find("Smutsia gigantea")[0].id == "manis-gigantea"  # synonym
    assert taxonomy.find("Malayopython reticulatus")[0].id == "python-reticulatus"
    ids = [t.id for t in taxonomy.find("pangolin")]
    assert len(ids) >= 10
    # exact before prefix before substring
    assert taxonomy.find("pangolins")[0].id == "manis"
    assert ids.index("manidae") < ids.index("manis-javanica")  # prefix, then substring
    assert taxonomy.find("zzz-no-such") == []
    assert taxonomy.find("   ") == []


def test_lineage_ancestors_children(taxonomy: Taxonomy) -> None:
    lineage = [t.id for t in taxonomy.lineage("loxodonta-africana")]
    assert lineage[:4] == ["loxodonta-africana", "loxodonta", "elephantidae", "proboscidea"]
    assert lineage[-1] == "animalia"
    assert [t.id for t in taxonomy.ancestors("loxodonta-africana")] == lineage[1:]
    assert {t.id for t in taxonomy.children("manis")} == {f"manis-{e}" for e in PANGOLINS}
    assert taxonomy.get("mammoth-ivory").parent_id is None


def test_unknown_id_raises_helpful_keyerror(taxonomy: Taxonomy) -> None:
    with pytest.raises(TaxonNotFoundError, match="manis-javanica") as info:
        taxonomy.get("manis-javanicus")
    assert isinstance(info.value, KeyError)
    assert "taxa search" in str(info.value)


@pytest.mark.parametrize(
    ("taxon_id", "country", "appendix", "basis"),
    [
        ("loxodonta-africana", "ZA", Appendix.II, "population"),
        ("loxodonta-africana", "BW", Appendix.II, "population"),
        ("loxodonta-africana", "KE", Appendix.I, "own"),
        ("vicugna-vicugna", "PE", Appendix.II, "population"),
        ("vicugna-vicugna", "AR", Appendix.II, "population"),
        ("vicugna-vicugna", "CL", Appendix.II, "population"),
        ("vicugna-vicugna", "US", Appendix.I, "own"),
        ("panthera-leo", "IN", Appendix.I, "population"),
        ("panthera-leo", "KE", Appendix.II, "own"),
        ("ursus-arctos", "CN", Appendix.I, "population"),
        ("ursus-arctos", "CA", Appendix.II, "own"),
        ("moschus", "NP", Appendix.I, "population"),
        ("moschus", "RU", Appendix.II, "own"),
        ("crocodylus-niloticus", "ZA", Appendix.II, "population"),
        ("crocodylus-niloticus", "SN", Appendix.I, "own"),
        ("struthio-camelus", "ZA", Appendix.NOT_LISTED, "own"),
        ("struthio-camelus", "NE", Appendix.I, "population"),
        ("diospyros", "MG", Appendix.II, "population"),
        ("diospyros", "IN", Appendix.NOT_LISTED, "own"),
        ("caiman-crocodilus", "CO", Appendix.II, "inherited"),
        ("caiman-crocodilus-apaporiensis", "CO", Appendix.I, "own"),
        ("odobenus-rosmarus", "CA", Appendix.III, "own"),
        ("mammoth-ivory", "RU", Appendix.NOT_LISTED, "lookalike"),
        ("sapele", None, Appendix.NOT_LISTED, "lookalike"),
    ],
)
def test_appendix_for_by_origin(
    taxonomy: Taxonomy, taxon_id: str, country: str | None, appendix: Appendix, basis: str
) -> None:
    resolution = taxonomy.appendix_for(taxon_id, country)
    assert resolution.appendix is appendix, resolution.explanation
    assert resolution.basis == basis
    assert not resolution.origin_dependent


def test_appendix_answers_are_remembered_per_taxon_and_normalised_country(
    taxonomy: Taxonomy,
) -> None:
    """The service asks the same questions for every answer: they are resolved once, and
    spellings of one country share the answer, while other countries keep their own."""
    kenya = taxonomy.appendix_for("loxodonta-africana", "KE")
    assert taxonomy.appendix_for("loxodonta-africana", "ke") is kenya
    south_africa = taxonomy.appendix_for("loxodonta-africana", "ZA")
    assert (kenya.appendix, south_africa.appendix) == (Appendix.I, Appendix.II)
    assert taxonomy.appendix_for("loxodonta-africana", "ZA") is south_africa


def test_split_listing_without_country_reports_strictest(taxonomy: Taxonomy) -> None:
    resolution = taxonomy.appendix_for("loxodonta-africana")
    assert resolution.appendix is Appendix.I
    assert resolution.origin_dependent
    assert "depends on the country of origin" in resolution.explanation
    lion = taxonomy.appendix_for("panthera-leo")
    assert lion.appendix is Appendix.I and lion.origin_dependent
    ostrich = taxonomy.appendix_for("struthio-camelus")
    assert ostrich.appendix is Appendix.I and ostrich.origin_dependent


def test_inherited_appendix_names_its_source(taxonomy: Taxonomy) -> None:
    resolution = taxonomy.appendix_for("dalbergia-latifolia", "IN")
    assert resolution.appendix is Appendix.II
    assert resolution.source_id == "dalbergia"
    assert "inherited from Dalbergia" in resolution.explanation
    assert taxonomy.appendix_for("dalbergia-nigra").appendix is Appendix.I


def test_groups_report_strictest_member_and_ask_to_confirm(taxonomy: Taxonomy) -> None:
    ivory = taxonomy.appendix_for("ivory-elephant-walrus", "CA")
    assert ivory.appendix is Appendix.I
    assert ivory.basis == "group" and ivory.confirm_species
    assert "Odobenus rosmarus: Appendix III" in ivory.explanation
    wide = taxonomy.get("ivory-any")
    assert set(wide.members) >= {
        "loxodonta-africana",
        "odobenus-rosmarus",
        "hippopotamus-amphibius",
        "physeter-macrocephalus",
        "monodon-monoceros",
    }
    scales = taxonomy.appendix_for("pangolin-scales")
    assert scales.appendix is Appendix.I and not scales.confirm_species


def test_unlisted_higher_taxon_reports_descendants(taxonomy: Taxonomy) -> None:
    resolution = taxonomy.appendix_for("pterocarpus")
    assert resolution.appendix is Appendix.II
    assert resolution.basis == "descendants" and resolution.confirm_species
    assert taxonomy.get("elephantidae").appendix is None


def test_lookalikes_are_not_cites(taxonomy: Taxonomy) -> None:
    for taxon in taxonomy:
        if taxon.kind == "lookalike":
            assert not taxon.cites
            assert taxonomy.appendix_for(taxon.id).appendix is Appendix.NOT_LISTED
    assert "loxodonta-africana" in taxonomy.get("mammoth-ivory").resembles


def test_invalid_country_is_rejected(taxonomy: Taxonomy) -> None:
    with pytest.raises(InvalidCountryError, match="ISO 3166-1"):
        taxonomy.appendix_for("panthera-leo", "XX")
    assert taxonomy.appendix_for("panthera-leo", " in ").country == "IN"


# ---- CLI -----------------------------------------------------------------------------------


def test_cli_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["taxa", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) >= 60
    manis = [d for d in data if d["scientific_name"].startswith("Manis ")]
    assert len(manis) == 8
    assert all(d["appendix"] == "I" for d in manis)


def test_cli_search_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["taxa", "search", "hawksbill"]) == 0
    assert "eretmochelys-imbricata" in capsys.readouterr().out
    assert main(["taxa", "search", "tortue", "imbriquée", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["id"] == "eretmochelys-imbricata"
    assert data[0]["resolved_appendix"]["appendix"] == "I"


def test_cli_search_unknown_word_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["taxa", "search", "qwertyuiop"]) == 1
    assert "no taxon matches 'qwertyuiop'" in capsys.readouterr().err


def test_cli_show_and_appendix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["taxa", "show", "African elephant"]) == 0
    out = capsys.readouterr().out
    assert "Loxodonta africana" in out and "BW, NA, ZA, ZW" in out
    assert main(["taxa", "appendix", "loxodonta-africana", "--country", "ZA"]) == 0
    assert capsys.readouterr().out.startswith("Appendix II")
    assert main(["taxa", "appendix", "loxodonta-africana", "--country", "KE", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["appendix"] == "I"


def test_cli_user_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["taxa", "show", "no-such-taxon"]) == 1
    assert "taxa search" in capsys.readouterr().err
    assert main(["taxa", "appendix", "panthera-leo", "--country", "QQ"]) == 2
    assert "ISO 3166-1" in capsys.readouterr().err


def test_cli_reports_bad_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [_row("felis-catus", "Felis catus", "species", "nowhere", "cat"), *GOOD_ROWS[:4]]
    taxa, _ = _write(tmp_path, rows)
    assert main(["taxa", "--data", str(taxa), "list"]) == 2
    assert f"{taxa}:3: unknown parent" in capsys.readouterr().err
