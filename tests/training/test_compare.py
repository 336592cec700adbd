"""``compare`` and the ``train --base`` rule, on the tiny bundles of ``tests.factories``.

The tiny model answers red -> label 0, blue -> 1, green -> 2. A bundle whose first two labels
are swapped is therefore wrong on every red and blue image: a known worse model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from model.bundle import load_bundle
from model.cli import main
from model.labels import Label
from tests.factories import TINY_LABELS, make_tiny_bundle

pytest.importorskip("matplotlib")

from training.compare import compare_bundles, judge_against_base
from training.data import load_folder

SWAPPED = (
    Label(0, "ceramic", "Ceramic or porcelain", "ceramic-porcelain", "lookalike"),
    Label(1, "ivory", "Elephant ivory", "loxodonta-africana", "cites"),
    TINY_LABELS[2],
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    for label, colour in (
        ("ivory", (255, 0, 0)),
        ("ceramic", (0, 0, 255)),
        ("rosewood", (0, 255, 0)),
    ):
        (root / "data" / label).mkdir(parents=True)
        for i in range(5):
            shade = (min(255, colour[0] + i), colour[1], min(255, colour[2] + i))
            Image.new("RGB", (40, 30), shade).save(root / "data" / label / f"{i}.png")
    return {
        "data": root / "data",
        "good": make_tiny_bundle(root / "w", version="good"),
        "worse": make_tiny_bundle(root / "w", version="worse", labels=SWAPPED),
    }


def test_compare_reports_paired_difference(setup: dict[str, Path]) -> None:
    good, worse = load_bundle(setup["good"]), load_bundle(setup["worse"])
    result = compare_bundles(good, worse, load_folder(setup["data"]))
    assert result["images"] == 15
    assert result["a"]["accuracy"] == 1.0
    assert result["b"]["accuracy"] == pytest.approx(5 / 15, abs=1e-4)
    assert result["mcnemar"]["a_right_b_wrong"] == 10
    assert result["mcnemar"]["b_right_a_wrong"] == 0
    assert result["mcnemar"]["method"] == "exact"
    assert result["mcnemar"]["p_value"] == pytest.approx(2 / 2**10, rel=1e-3)
    assert result["significant"] is True and result["b_not_worse"] is False


def test_base_rule_refuses_a_worse_candidate(
    setup: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    good, worse = load_bundle(setup["good"]), load_bundle(setup["worse"])
    samples = load_folder(setup["data"])
    with caplog.at_level(logging.WARNING, logger="training.compare"):
        recommended, comparison = judge_against_base(good, worse, samples)
    assert comparison["b_not_worse"] is False
    assert recommended is False
    assert "not marked recommended" in caplog.text
    recommended, _ = judge_against_base(worse, good, samples)
    assert recommended is True
    recommended, _ = judge_against_base(good, good, samples)
    assert recommended is True  # equal is not worse


def test_compare_command_json(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "compare",
            "--a",
            str(setup["good"]),
            "--b",
            str(setup["worse"]),
            "--data",
            str(setup["data"]),
            "--json",
            "--limit",
            "9",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 9
    assert result["difference"] < 0
