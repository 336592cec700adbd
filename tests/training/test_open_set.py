"""Open-set helpers: the near-domain set, re-shoots, the figures and the all-clear thresholds."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.labels import Label
from training.calibrate import choose_all_clear_thresholds
from training.data import DataError, Sample
from training.evaluation import EvalResult
from training.metrics import wilson_interval
from training.open_set import (
    by_capture,
    capture_of,
    near_domain_names,
    near_domain_samples,
    open_set_figures,
    open_set_split,
    reshoot,
    unrelated_samples,
    write_reshoots,
)


def _imagenet(root: Path, names: list[str]) -> Path:
    lines = ["index\twnid\tname\tpath"]
    for i, name in enumerate(names):
        rel = f"{i:03d}_{name}/{name}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (i * 7 % 255, 90, 30)).save(root / rel)
        lines.append(f"{i}\tn{i:08d}\t{name}\t{rel}")
    (root / "labels.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_near_domain_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    names = near_domain_names()
    root = _imagenet(tmp_path / "imagenet", [*names, "tench", "goldfish"])
    split = near_domain_samples(root)
    val = {s.label for s in split["val"]}
    test = {s.label for s in split["test"]}
    assert val | test == set(names) and not val & test
    assert all(open_set_split(name) == "val" for name in val)
    assert 0.3 < len(val) / len(names) < 0.7
    assert [s.label for s in unrelated_samples(root)] == ["tench", "goldfish"]


def test_near_domain_names_a_missing_class(tmp_path: Path) -> None:
    root = _imagenet(tmp_path / "imagenet", near_domain_names()[1:])
    with pytest.raises(DataError, match=near_domain_names()[0]):
        near_domain_samples(root)
    with pytest.raises(DataError, match=r"labels\.tsv"):
        near_domain_samples(tmp_path)


def test_reshoots_are_deterministic_and_change_the_photo(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (120, 90), (200, 190, 170)).save(photo)
    background = tmp_path / "bg.png"
    Image.new("RGB", (100, 100), (10, 120, 10)).save(background)
    sample = Sample(photo, "ivory", source="met")
    first = write_reshoots([sample], [background], tmp_path / "a")
    second = write_reshoots([sample], [background], tmp_path / "b")
    assert first[0].label == "ivory" and first[0].source == "met-reshoot"
    a = np.asarray(Image.open(first[0].path), dtype=np.int16)
    b = np.asarray(Image.open(second[0].path), dtype=np.int16)
    assert a.shape == (90, 120, 3)
    np.testing.assert_array_equal(a, b)
    original = np.asarray(Image.open(photo), dtype=np.int16)
    assert np.abs(a - original).mean() > 3  # light, colour, border: not the same photo
    # the border shows the other scene: some green pixels near the edges
    with Image.open(photo) as image, Image.open(background) as scene:
        shot = np.asarray(reshoot(image, scene, random.Random(0)), dtype=np.int16)
    edges = np.concatenate([shot[:3].reshape(-1, 3), shot[-3:].reshape(-1, 3)])
    assert (edges[:, 1] > edges[:, 0] + 40).any()
    with pytest.raises(DataError, match="background"):
        write_reshoots([sample], [], tmp_path / "c")


def test_open_set_figures_count_flags_and_all_clears() -> None:
    figures = open_set_figures(
        ["taxon", "taxon", "uncertain", "lookalike"],
        ["outside_training_domain", "uncertain", "lookalike", "taxon"],
    )
    assert figures["unknown_flagged"]["rate"] == 0.5
    assert figures["unknown_all_clear"]["rate"] == 0.25
    assert figures["unknown_called_cites"]["rate"] == 0.25
    assert figures["known_flagged"]["rate"] == 0.25
    low, high = figures["unknown_flagged"]["ci95"]
    assert low < 0.5 < high


@pytest.mark.parametrize(
    ("name", "capture"),
    [
        ("20170923_163057.jpg", "phone"),
        ("20170920_202750(1).jpg", "phone"),
        ("IMG_20240101_120000.jpg", "phone"),
        ("PXL_20231105_101010123.jpg", "phone"),
        ("dalbergia-baronii-250x167.jpg", "catalogue"),
        ("ivory_10074.jpg", "catalogue"),
        ("60304.jpg", "catalogue"),
        ("12345678.jpg", "catalogue"),
    ],
)
def test_capture_of_tells_phone_camera_names(name: str, capture: str) -> None:
    assert capture_of(Path("/data/wood") / name) == capture


def test_by_capture_splits_accuracy_flags_and_all_clears() -> None:
    labels = (
        Label(0, "rosewood", "Rosewood", "dalbergia", "cites"),
        Label(1, "other-timber", "Other timber", "timber-non-listed", "lookalike"),
    )
    names = ["20170923_163057.jpg", "20170923_163102.jpg", "a-250x167.jpg", "b-250x167.jpg"]
    samples = [Sample(Path(n), "x") for n in names]
    y_true = np.array([1, 0, 0, 1])
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.9, 0.1], [0.6, 0.4]])
    result = EvalResult(
        labels,
        y_true,
        probs,
        probs,
        {},
        decisions=["lookalike", "lookalike", "taxon", "uncertain"],
    )
    figures = by_capture(samples, result)
    phone, catalogue = figures["phone"], figures["catalogue"]
    assert (phone["images"], catalogue["images"]) == (2, 2)
    assert phone["accuracy"]["rate"] == 0.5 and catalogue["accuracy"]["rate"] == 0.5
    assert phone["flagged"]["rate"] == 0.0 and catalogue["flagged"]["rate"] == 0.5
    assert phone["cites_images"] == 1 and phone["all_clear_on_cites"]["rate"] == 1.0
    assert catalogue["all_clear_on_cites"]["rate"] == 0.0
    only_catalogue = by_capture(samples, result, [False, False, True, True])
    assert list(only_catalogue) == ["catalogue"]


def test_wilson_interval() -> None:
    low, high = wilson_interval(9, 10)
    assert low == pytest.approx(0.596, abs=1e-3) and high == pytest.approx(0.982, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing measured: anything is possible


def test_all_clear_threshold_rises_until_listed_images_are_spared() -> None:
    # labels: 0 ivory (cites), 1 ceramic (lookalike), 2 rosewood (cites), 3 other-timber
    kinds = ["cites", "lookalike", "cites", "lookalike"]
    ids = ["ivory", "ceramic", "rosewood", "other-timber"]
    probs = np.array(
        [
            [0.9, 0.1, 0.0, 0.0],  # ivory, right
            [0.1, 0.9, 0.0, 0.0],  # ceramic, right
            [0.0, 0.0, 0.3, 0.7],  # rosewood answered other timber at 0.7: an all-clear
            [0.0, 0.0, 0.8, 0.2],  # rosewood, right
            [0.0, 0.0, 0.05, 0.95],  # other timber
            [0.0, 0.0, 0.2, 0.8],  # other timber
        ]
    )
    y = np.array([0, 1, 2, 2, 3, 3])
    chosen = choose_all_clear_thresholds(
        probs, y, kinds, ids, 0.5, max_all_clear=0.0, min_guarded_images=0
    )
    timber = chosen["other-timber"]
    assert timber.guarded == ("rosewood",)
    assert 0.7 < timber.threshold <= 0.8  # above the rosewood image, at most the own 0.8
    assert timber.all_clear == 0.0 and timber.own_unanswered == 0.0
    assert chosen["ceramic"].threshold == 0.5 and chosen["ceramic"].guarded == ("ivory",)
    assert chosen["other-timber"].to_dict()["curve"][0] == [0.5, 0.5, 0.0]
    assert "weak_evidence" not in timber.to_dict()

    # Two rosewood validation images cannot show that at most 5% get an all-clear: the
    # threshold is raised to the floor, and the rule's own choice is kept beside it.
    floored = choose_all_clear_thresholds(probs, y, kinds, ids, 0.5, max_all_clear=0.0)
    timber = floored["other-timber"]
    assert timber.threshold == 0.98 and timber.rule_threshold == pytest.approx(0.705)
    assert timber.to_dict()["weak_evidence"] == {"floor": 0.98, "rule_threshold": 0.705}
    assert timber.own_unanswered == 1.0  # both common-timber images are now "uncertain"
    assert floored["ceramic"].threshold == 0.98  # one ivory image: the floor again
