"""``cites-vision taxa import``: Species+ CSV export and API JSON read, the difference printed
before anything is written, ``--write`` applying it (tests/model/data/speciesplus/ holds a small
taxonomy and sample files in the documented formats)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from model.cli import main
from model.speciesplus import ImportFormatError, diff_taxonomy, read_export
from model.taxonomy import Appendix, Taxonomy

SAMPLES = Path(__file__).resolve().parent / "data" / "speciesplus"


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """A writable copy of the small taxonomy; returns its taxa.tsv."""
    for name in ("taxa.tsv", "populations.tsv"):
        shutil.copy(SAMPLES / name, tmp_path / name)
    return tmp_path / "taxa.tsv"


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def changes(sample: str, data: Path, taxon: str | None = None) -> list[dict[str, object]]:
    args = ["taxa", "--data", str(data), "import", str(SAMPLES / sample), "--json"]
    code, out, _err = run(*args, *(["--taxon", taxon] if taxon else []))
    assert code == 0
    return list(json.loads(out)["changes"])


EXPECTED = [
    ("appendix", "odobenus-rosmarus", "Appendix III", "Appendix II"),
    ("population", "crocodylus-porosus", "PH: Appendix I", "Appendix II for PH"),
    ("added", "bycanistes-cylindricus", "-", "species under Bucerotidae: Appendix II"),
]


@pytest.mark.parametrize("sample", ["listings-cop20.csv", "taxon-concepts-cop20.json"])
def test_difference_of_one_appendix_one_taxon_one_country_listing(sample: str, data: Path) -> None:
    found = changes(sample, data)
    assert [(c["kind"], c["taxon_id"], c["before"], c["after"]) for c in found] == EXPECTED
    if sample.endswith(".json"):  # the API carries effective dates; the CSV export does not
        assert [c["effective_at"] for c in found] == ["2026-03-05", "2023-02-23", "2026-03-05"]
        assert "Palawan population" in str(found[1]["annotation"])


def test_the_difference_is_printed_and_nothing_is_written_without_write(data: Path) -> None:
    before = data.read_bytes(), (data.parent / "populations.tsv").read_bytes()
    code, out, _err = run(
        "taxa", "--data", str(data), "import", str(SAMPLES / "listings-cop20.csv")
    )
    assert code == 0
    assert (
        "listing changed: Odobenus rosmarus [odobenus-rosmarus]: Appendix III -> Appendix II" in out
    )
    assert "country-specific listing: Crocodylus porosus" in out
    assert "taxon added: Bycanistes cylindricus" in out
    assert "nothing written" in out
    assert (data.read_bytes(), (data.parent / "populations.tsv").read_bytes()) == before


def test_write_applies_the_difference_marked_verified_with_the_file_as_source(
    data: Path,
) -> None:
    sample = SAMPLES / "taxon-concepts-cop20.json"
    code, _out, err = run("taxa", "--data", str(data), "import", str(sample), "--write")
    assert code == 0, err
    taxonomy = Taxonomy.load(data)
    walrus = taxonomy.get("odobenus-rosmarus")
    assert walrus.appendix is Appendix.II
    assert walrus.verification == "V" and str(sample) in walrus.source
    assert taxonomy.appendix_for("crocodylus-porosus", "PH").appendix is Appendix.II
    assert taxonomy.appendix_for("crocodylus-porosus", "PH").basis == "population"
    assert taxonomy.appendix_for("crocodylus-porosus", "TH").appendix is Appendix.I
    row = next(p for p in taxonomy.get("crocodylus-porosus").populations)
    assert row.verification == "V" and "taxon concept 9990" in row.source
    hornbill = taxonomy.get("bycanistes-cylindricus")
    assert hornbill.parent_id == "bucerotidae" and hornbill.appendix is Appendix.II
    assert hornbill.common_names["fr"] == "Calao à joues brunes"
    assert hornbill.synonyms == ("Ceratogymna cylindricus",)
    assert "ceratogymna-cylindricus" not in taxonomy  # a synonym concept is not a taxon
    # importing the same file again finds nothing more to do
    assert changes("taxon-concepts-cop20.json", data) == []


def test_cites_legislation_needs_the_taxon_and_shows_reservations(data: Path) -> None:
    code, _out, err = run(
        "taxa", "--data", str(data), "import", str(SAMPLES / "cites-legislation-walrus.json")
    )
    assert code == 2 and "--taxon" in err
    found = changes("cites-legislation-walrus.json", data, taxon="Odobenus rosmarus")
    assert next((c["kind"], c["after"]) for c in found) == ("appendix", "Appendix II")
    assert found[1]["kind"] == "reservation" and "GL" in str(found[1]["after"])
    assert found[1]["effective_at"] == "2026-06-03"


def test_removed_taxa_of_a_covered_family_are_shown(data: Path, tmp_path: Path) -> None:
    csv_text = (SAMPLES / "listings-cop20.csv").read_text(encoding="utf-8")
    without_walrus = "\n".join(line for line in csv_text.splitlines() if "Odobenus" not in line)
    family_only = csv_text.splitlines()[1].replace("Odobenus rosmarus", "Odobenidae", 2)
    sample = tmp_path / "no-walrus.csv"
    sample.write_text(
        without_walrus
        + "\n"
        + family_only.replace("SPECIES", "FAMILY").replace(",II,", ",,")
        + "\n",
        encoding="utf-8",
    )
    taxonomy = Taxonomy.load(data)
    diff = diff_taxonomy(read_export(sample, taxonomy.countries), taxonomy)
    assert ("removed", "odobenus-rosmarus") in [(c.kind, c.taxon_id) for c in diff.changes]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("Id,Name\n1,x\n", "missing column"),
        ('{"foo": []}', "not a Species+ API answer"),
        ("{not json", "invalid JSON"),
    ],
)
def test_files_in_another_format_are_refused(
    data: Path, tmp_path: Path, content: str, message: str
) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text(content, encoding="utf-8")
    code, _out, err = run("taxa", "--data", str(data), "import", str(bad))
    assert code == 2 and message in err
    with pytest.raises(ImportFormatError):
        read_export(bad, Taxonomy.load(data).countries)
    code, _out, err = run("taxa", "--data", str(data), "import", str(tmp_path / "absent.csv"))
    assert code == 2 and "file not found" in err


def test_an_export_of_a_few_species_removes_nothing_from_the_real_taxonomy() -> None:
    from model.taxonomy import default_taxonomy

    taxonomy = default_taxonomy()
    diff = diff_taxonomy(read_export(SAMPLES / "listings-cop20.csv", taxonomy.countries), taxonomy)
    kinds = {(c.kind, c.taxon_id) for c in diff.changes}
    assert not [c for c in diff.changes if c.kind == "removed"]  # e.g. Rhinoplax vigil stays
    assert ("added", "bycanistes-cylindricus") in kinds


def test_one_page_of_an_api_answer_looks_for_no_removals(data: Path, tmp_path: Path) -> None:
    page = json.loads((SAMPLES / "taxon-concepts-cop20.json").read_text(encoding="utf-8"))
    page["pagination"]["total_entries"] = 900
    page["taxon_concepts"].append(
        {
            "id": 7000,
            "full_name": "Odobenidae",
            "rank": "FAMILY",
            "name_status": "A",
            "higher_taxa": {},
            "cites_listings": [],
        }
    )
    sample = tmp_path / "page-1.json"
    sample.write_text(json.dumps(page), encoding="utf-8")
    taxonomy = Taxonomy.load(data)
    diff = diff_taxonomy(read_export(sample, taxonomy.countries), taxonomy)
    assert "one page (5 of 900 taxon concepts)" in " ".join(diff.skipped)
    assert not [c for c in diff.changes if c.kind == "removed"]


def test_a_species_listed_under_its_genus_matches_an_inherited_listing(tmp_path: Path) -> None:
    from model.taxonomy import default_taxonomy

    header = (SAMPLES / "listings-cop20.csv").read_text(encoding="utf-8").splitlines()[0]
    row = (
        "5000,Plantae,Tracheophyta,Magnoliopsida,Fabales,Fabaceae,Dalbergia,latifolia,,"
        "Dalbergia latifolia,Roxb.,SPECIES,II,,Dalbergia spp.,,#15,,,,,,,,,"
    )
    sample = tmp_path / "rosewood.csv"
    sample.write_text(header + "\n" + row + "\n", encoding="utf-8")
    taxonomy = default_taxonomy()
    diff = diff_taxonomy(read_export(sample, taxonomy.countries), taxonomy)
    assert diff.changes == [] and diff.unchanged == 1  # II #15 inherited from Dalbergia spp.
