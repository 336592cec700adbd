"""Datasets, label maps, grouped split and class weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import data as d


def _image(path: Path, colour: tuple[int, int, int] = (200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)
    return path


def test_normalised_stem_groups_variants_of_one_board() -> None:
    names = [
        "black-walnut-200x200.jpg",
        "black-walnut-sealed-200x200.jpg",
        "black-walnut-endgrain-zoom-200x200.jpg",
        "black-walnut-full-48x200.jpg",
    ]
    assert {d.normalised_stem(n) for n in names} == {"black-walnut"}
    assert d.normalised_stem("peruvian-walnut-sealed1-200x200.jpg") == "peruvian-walnut"
    assert d.normalised_stem("20170920_202750(1).jpg") == "20170920_202750"
    assert d.normalised_stem("20170920_202756.jpg") != d.normalised_stem("20170920_202750.jpg")
    assert d.normalised_stem("ivory_10074.jpg") != d.normalised_stem("non_ivory_10074.jpg")
    assert d.normalised_stem("ivory_10074.jpg") != d.normalised_stem("ivory_10135.jpg")
    assert d.normalised_stem("acacia-mearnsii-1-250x167.jpg") == "acacia-mearnsii"
    assert d.normalised_stem("abies-balsamea2-300x600.jpg") == "abies-balsamea"


def test_camera_bursts_keep_shots_of_one_shelf_together(tmp_path: Path) -> None:
    """Store photos seconds apart (one shelf) are one case, across class folders; a shot more
    than two minutes after the previous one starts a new case; other names keep their stem."""
    shots = {
        "rockler_cherry": ["20170923_162941.jpg", "20170923_163001.jpg"],
        "rockler_bubinga": ["20170923_163057.jpg", "20170923_163130.jpg"],
        "rockler_poplar": ["20170923_163551.jpg", "20170923_163601.jpg"],
        "red_oak": ["20170920_202750(1).jpg", "20170920_202756.jpg"],
        "walnut": ["bastogne-walnut-200x200.jpg", "bastogne-walnut-ez-200x200.jpg"],
    }
    for label, names in shots.items():
        for name in names:
            _image(tmp_path / "wood" / label / name, (90, 60, 30))
    cases = {s.path.name: s.case_id for s in d.load_folder(tmp_path / "wood")}
    assert cases["20170923_162941.jpg"] == cases["20170923_163130.jpg"] == "burst-20170923_162941"
    assert cases["20170923_163551.jpg"] == cases["20170923_163601.jpg"] == "burst-20170923_163551"
    assert cases["20170920_202750(1).jpg"] == cases["20170920_202756.jpg"]
    assert cases["bastogne-walnut-200x200.jpg"] == "bastogne-walnut"
    assert len(set(cases.values())) == 4
    split = d.split_samples(d.load_folder(tmp_path / "wood"))
    sides = {s.case_id: side for side, members in split.items() for s in members}
    for side, members in split.items():  # never one shot of a burst on each side
        assert all(sides[s.case_id] == side for s in members)
    assert d.camera_time("20170230_101010.jpg") is None  # no 30 February
    assert d.camera_time("PXL_20231105_101010123.jpg") is not None


def _samples(n_groups: int, per_group: int, label: str, source: str = "s") -> list[d.Sample]:
    return [
        d.Sample(Path(f"/x/{label}/{g}-{i}.jpg"), label, source=source, case_id=f"{label}{g}")
        for g in range(n_groups)
        for i in range(per_group)
    ]


def test_split_is_deterministic_grouped_and_stratified() -> None:
    samples = _samples(40, 3, "a") + _samples(20, 2, "b") + _samples(3, 1, "tiny")
    first = d.split_samples(samples, seed=0)
    again = d.split_samples(list(reversed(samples)), seed=0)
    assert {k: sorted(map(str, (s.path for s in v))) for k, v in first.items()} == {
        k: sorted(map(str, (s.path for s in v))) for k, v in again.items()
    }
    sides = {}
    for side, part in first.items():
        for sample in part:
            assert sides.setdefault(sample.group, side) == side  # a case never on two sides
    for label in ("a", "b", "tiny"):  # every class with >= 3 groups reaches val and test
        for side in ("val", "test"):
            assert any(s.label == label for s in first[side])
    n_val_groups = len({s.group for s in first["val"] if s.label == "a"})
    assert n_val_groups == 6  # round(0.15 * 40)
    other_seed = d.split_samples(samples, seed=1)
    assert {s.group for s in other_seed["val"]} != {s.group for s in first["val"]}


def test_split_keeps_a_case_with_two_classes_together() -> None:
    shared = [
        d.Sample(Path("/x/a/1.jpg"), "a", source="s", case_id="seizure-7"),
        d.Sample(Path("/x/b/2.jpg"), "b", source="s", case_id="seizure-7"),
    ]
    result = d.split_samples(shared + _samples(10, 1, "a") + _samples(10, 1, "b"))
    where = {side for side, part in result.items() for s in part if s.case_id == "seizure-7"}
    assert len(where) == 1


def test_folder_and_manifest_loading(tmp_path: Path) -> None:
    _image(tmp_path / "set" / "ivory" / "a-sealed-10x10.jpg")
    _image(tmp_path / "set" / "ivory" / "a-10x10.jpg", (10, 200, 10))
    _image(tmp_path / "set" / "non_ivory" / "b.png", (10, 10, 200))
    (tmp_path / "set" / "SOURCE.txt").write_text("not an image")
    samples = d.load_folder(tmp_path / "set")
    assert [(s.label, s.case_id, s.source) for s in samples] == [
        ("ivory", "a", "set"),
        ("ivory", "a", "set"),
        ("non_ivory", "b", "set"),
    ]
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label,modality,source,case_id\n"
        "set/ivory/a-10x10.jpg,ivory,camera,port,case1\n"
        "set/non_ivory/b.png,non_ivory,xray,,\n"
    )
    rows = d.load_manifest(manifest)
    assert rows[0].case_id == "case1" and rows[0].source == "port"
    assert rows[1].modality == "xray" and rows[1].source == "m" and rows[1].case_id == "b"
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nset/ivory/a-10x10.jpg,ivory\nmissing.jpg,ivory\n")
    with pytest.raises(d.DataError, match=r"bad\.csv:3: image .*missing\.jpg does not exist"):
        d.load_manifest(bad)


def test_byte_identical_duplicates_are_dropped_or_refused(tmp_path: Path) -> None:
    _image(tmp_path / "one" / "x" / "a.png")
    _image(tmp_path / "two" / "x" / "a-copy.png")
    assert len(d.load_datasets([tmp_path / "one", tmp_path / "two"])) == 1
    _image(tmp_path / "three" / "y" / "a.png")
    with pytest.raises(d.DataError, match="byte-identical"):
        d.load_datasets([tmp_path / "one", tmp_path / "three"])


HEADER = "dataset_class\tlabel_id\tlabel_name\ttaxon_id\tkind\n"


def test_label_map_parses_and_merges_classes(tmp_path: Path) -> None:
    path = tmp_path / "map.tsv"
    path.write_text(
        "# comment\n" + HEADER + "ivory\tivory\tIvory\tivory-elephant-walrus\tcites\n"
        "non_ivory\tceramic\tCeramic\tceramic-porcelain\tlookalike\n"
        "pine\tother\tOther timber\ttimber-non-listed\tlookalike\n"
        "oak\tother\tOther timber\ttimber-non-listed\tlookalike\n"
    )
    label_map = d.read_label_map(path)
    assert [label.id for label in label_map.labels] == ["ivory", "ceramic", "other"]
    assert label_map.index_of("oak") == label_map.index_of("pine") == 2
    with pytest.raises(d.DataError, match="'birch' is not in the label map"):
        label_map.index_of("birch")


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("a\tb\tc\n", 1, "expected the header"),
        (HEADER + "ivory\tivory\tIvory\tx\n", 2, "expected 5 tab-separated fields"),
        (HEADER + "ivory\tivory\tIvory\tx\tspecies\n", 2, "kind 'species'"),
        (HEADER + "a\tx\tX\tt1\tcites\nb\ty\tY\tt2\tcites\na\ty\tY\tt2\tcites\n", 4, "twice"),
        (HEADER + "a\tx\tX\tt1\tcites\nb\tx\tX\tt2\tcites\n", 3, "earlier line"),
    ],
)
def test_label_map_errors_name_file_and_line(
    tmp_path: Path, body: str, line: int, message: str
) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(body)
    with pytest.raises(d.DataError, match=rf"bad\.tsv:{line}: .*{message}"):
        d.read_label_map(path)


def test_default_label_map_names_taxa_of_the_taxonomy() -> None:
    path = Path(__file__).resolve().parents[2] / "training" / "label_maps" / "default.tsv"
    label_map = d.read_label_map(path)
    d.check_taxa(label_map)
    assert label_map.index_of("rockler_bubinga_black-wattle") == label_map.index_of("pine")


def test_class_weights_are_inverse_frequency() -> None:
    weights = d.class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights.tolist() == pytest.approx([4 / 6, 4 / 2, 0.0])


def test_class_weights_can_be_tempered() -> None:
    weights = d.class_weights(np.array([0, 0, 0, 1]), 2, power=0.5)
    assert weights.tolist() == pytest.approx([(4 / 6) ** 0.5, 2**0.5])
