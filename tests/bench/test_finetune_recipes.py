"""The recipe-experiment script runs on tiny generated images and never touches the test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

from bench import finetune_recipes as fr
from tests.training.test_pipeline import LABEL_MAP, make_colour_set

pytestmark = [pytest.mark.train, pytest.mark.slow]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Common options: generated colour images, their label map, a temporary output folder."""
    root = tmp_path_factory.mktemp("recipes")
    data = make_colour_set(root / "colours", per_class=10, size=48)
    label_map = root / "map.tsv"
    label_map.write_text(LABEL_MAP)
    return [
        "--data",
        str(data),
        "--label-map",
        str(label_map),
        "--out",
        str(root / "out"),
        "--cache-dir",
        str(root / "cache"),
        "--input-size",
        "96",
        "--epochs",
        "1",
    ]


def _run(setup: list[str], name: str, *extra: str) -> dict:
    assert fr.main([*setup, "--name", name, *extra]) == 0
    out = Path(setup[setup.index("--out") + 1]) / name
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def runs(setup: list[str]) -> dict[str, dict]:
    """Two finished runs: the shipped recipe, and one with every change switched on."""
    plain = _run(setup, "plain")
    changed = _run(
        setup,
        "changed",
        "--ema",
        "0.9",
        "--llrd",
        "0.8",
        "--sgd",
        "--lr",
        "0.01",
        "--freeze-bn",
        "--trivial-augment",
        "--grayscale",
        "0.5",
        "--mix",
        "0.4",
        "--label-smoothing",
        "0.1",
        "--sam",
        "0.05",
        "--seed",
        "1",
    )
    return {"plain": plain, "changed": changed}


def test_plain_and_modified_recipes_train_and_report_validation_by_source(
    runs: dict[str, dict],
) -> None:
    plain, changed = runs["plain"], runs["changed"]
    for result in (plain, changed):
        (row,) = result["epochs"]
        assert set(row["accuracy"]) == {"all", "colours"}
        assert 0.0 <= row["accuracy"]["all"] <= 1.0
        assert np.isfinite(row["val_loss"])
    assert "ema_accuracy" in changed["epochs"][0]
    assert "ema_accuracy" not in plain["epochs"][0]
    assert changed["args"]["sgd"] is True


def test_combine_scores_ensemble_and_soup(
    setup: list[str], runs: dict[str, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    assert fr.main([*setup, "--combine", ",".join(runs)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"runs", "ensemble", "soup"}
    assert set(result["runs"]) == {"plain", "changed"}
    assert 0.0 <= result["soup"]["all"] <= 1.0


def test_combine_refuses_a_missing_run(setup: list[str]) -> None:
    with pytest.raises(SystemExit, match=r"no last\.pt"):
        fr.main([*setup, "--combine", "never-trained"])


def test_name_or_combine_is_required(setup: list[str]) -> None:
    with pytest.raises(SystemExit):
        fr.parse_args([])


def test_zero_epochs_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        fr.parse_args(["--name", "x", "--epochs", "0"])
    assert "--epochs must be at least 1" in capsys.readouterr().err
