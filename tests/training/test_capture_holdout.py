"""The source hold-out's files (training.capture_holdout): catalogue photos to train on, the
phone photos of taught classes to measure on, untaught ones apart, a trimmed label map."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from training.capture_holdout import main, write_holdout
from training.data import read_label_map


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (120, 80, 40)).save(path)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_holdout_files_split_by_capture(tmp_path: Path) -> None:
    wood = tmp_path / "wood"
    for name in ("oak-200x200.jpg", "oak-sealed-200x200.jpg", "20170920_202750.jpg"):
        _image(wood / "red_oak" / name)
    _image(wood / "rockler_cherry" / "20170923_162941.jpg")  # phone only, but a taught label
    for name in ("20170923_163057.jpg", "20170923_163102.jpg"):
        _image(wood / "rockler_bubinga" / name)
    _image(wood / "rosewood" / "dalbergia-nigra-250x167.jpg")
    label_map = tmp_path / "map.tsv"
    label_map.write_text(
        "# a comment\n"
        "dataset_class\tlabel_id\tlabel_name\ttaxon_id\tkind\n"
        "red_oak\tother-timber\tOther timber\ttimber-non-listed\tlookalike\n"
        "rockler_cherry\tother-timber\tOther timber\ttimber-non-listed\tlookalike\n"
        "rockler_bubinga\tbubinga\tBubinga\tguibourtia\tcites\n"
        "rosewood\trosewood\tRosewood\tdalbergia\tcites\n",
        encoding="utf-8",
    )
    files = write_holdout(wood, label_map, tmp_path / "out")
    catalogue = _rows(files["catalogue"])
    assert sorted(Path(r["path"]).name for r in catalogue) == [
        "dalbergia-nigra-250x167.jpg",
        "oak-200x200.jpg",
        "oak-sealed-200x200.jpg",
    ]
    assert {r["source"] for r in catalogue} == {"wood"}  # grouped as on the folder
    assert sorted(Path(r["path"]).name for r in _rows(files["phone"])) == [
        "20170920_202750.jpg",
        "20170923_162941.jpg",
    ]
    untaught = _rows(files["phone-untaught"])
    assert {r["label"] for r in untaught} == {"rockler_bubinga"} and len(untaught) == 2
    # the cherry shot is 76 s before the first bubinga shot: one burst, one case
    assert {r["case_id"] for r in untaught} == {"burst-20170923_162941"}
    trimmed = read_label_map(files["labels"])
    assert set(trimmed.classes) == {"red_oak", "rockler_cherry", "rosewood"}


def test_holdout_needs_both_captures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _image(tmp_path / "wood" / "oak" / "oak-200x200.jpg")
    header = (
        "dataset_class\tlabel_id\tlabel_name\ttaxon_id\tkind\n"
        "rosewood\trosewood\tRosewood\tdalbergia\tcites\n"
        "mahogany\tmahogany\tMahogany\tswietenia\tcites\n"
    )
    (tmp_path / "map.tsv").write_text(header)
    argv = ["--data", str(tmp_path / "wood"), "--label-map", str(tmp_path / "map.tsv")]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "no row for the classes oak" in capsys.readouterr().err
    (tmp_path / "map.tsv").write_text(header + "oak\toak\tOak\ttimber-non-listed\tlookalike\n")
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "needs both phone photos and catalogue photos" in capsys.readouterr().err
