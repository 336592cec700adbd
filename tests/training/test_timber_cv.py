"""Timber cross-validation (training.timber_cv): every timber photo held out once, a case never
split across folds, per-label recall, all-clears at the policy threshold and the curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import Sample
from training.timber_cv import assign_folds, main

pytestmark = pytest.mark.train

COLOURS = {
    "ivory": (235, 225, 200),
    "non_ivory": (250, 250, 250),
    "rosewood": (90, 30, 20),
    "rockler_bubinga": (150, 60, 40),
    "pine": (230, 200, 140),
    "red_oak": (190, 140, 100),
}
NAMES = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")
LABEL_MAP = (
    "dataset_class\tlabel_id\tlabel_name\ttaxon_id\tkind\n"
    "ivory\tivory\tIvory\tivory-elephant-walrus\tcites\n"
    "non_ivory\tceramic\tCeramic\tceramic-porcelain\tlookalike\n"
    "rosewood\trosewood\tRosewood\tdalbergia\tcites\n"
    "rockler_bubinga\tbubinga\tBubinga\tguibourtia\tcites\n"
    "pine\tother-timber\tOther timber\ttimber-non-listed\tlookalike\n"
    "red_oak\tother-timber\tOther timber\ttimber-non-listed\tlookalike\n"
)


def _photos(folder: Path, colour: tuple[int, int, int], count: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        noise = rng.integers(-25, 25, (48, 48, 3))
        pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{NAMES[i]}.png")  # one case each


def test_every_timber_photo_is_held_out_once(tmp_path: Path) -> None:
    for seed, (name, colour) in enumerate(COLOURS.items()):
        source = "met-ivory" if name in ("ivory", "non_ivory") else "wood-trade-groups"
        _photos(tmp_path / source / name, colour, 6, seed)
    (tmp_path / "map.tsv").write_text(LABEL_MAP, encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--data", str(tmp_path / "met-ivory"), "--data", str(tmp_path / "wood-trade-groups")]
    argv += ["--label-map", str(tmp_path / "map.tsv"), "--out", str(out), "--folds", "3"]
    assert main([*argv, "--threshold", "0.9", "--cache-dir", str(tmp_path / "cache")]) == 0

    summary = json.loads((out / "timber-cv.json").read_text())
    assert summary["images"] == 24  # the wood photos only, each once
    assert set(summary["by_label"]) == {"rosewood", "bubinga", "other-timber"}
    assert summary["by_label"]["other-timber"]["recall"]["images"] == 12
    assert "all_clear" in summary["by_label"]["rosewood"]
    assert "all_clear" not in summary["by_label"]["other-timber"]
    # colours this distinct are learnt from the other folds
    assert summary["accuracy"]["rate"] >= 0.8
    assert summary["listed_all_clear"]["images"] == 12
    curve = summary["curve"]
    cleared = [p["listed_all_clear"] for p in curve]
    unanswered = [p["common_unanswered"] for p in curve]
    assert cleared == sorted(cleared, reverse=True) and unanswered == sorted(unanswered)
    assert curve[0]["threshold"] == 0.5 and curve[-1]["threshold"] == 1.0
    assert "| rosewood |" in (out / "timber-cv.md").read_text()

    assert main([*argv[4:], "--data", str(tmp_path / "met-ivory"), "--threshold", "0.9"]) == 2


def test_folds_keep_cases_together_and_spread_small_labels() -> None:
    samples = [
        Sample(Path(f"/x/{label}/{i}.jpg"), label, source="wood", case_id=f"{label}-{i // 2}")
        for label, count in (("padauk", 4), ("pine", 20))
        for i in range(count)
    ]
    folds = assign_folds(samples, 2, seed=3)
    by_case: dict[str, set[int]] = {}
    for sample, fold in zip(samples, folds, strict=True):
        by_case.setdefault(sample.group, set()).add(int(fold))
    assert all(len(f) == 1 for f in by_case.values())
    padauk = {int(f) for s, f in zip(samples, folds, strict=True) if s.label == "padauk"}
    assert padauk == {0, 1}  # its two cases go to different folds
