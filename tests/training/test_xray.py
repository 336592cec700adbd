"""Synthetic x-ray data by projection, its physics, and synth -> train -> evaluate end to end.

The end-to-end test runs at a small scale on generated inputs (museum-like photos of an
ellipse on a plain background, wood-like stripes, pseudo-colour-like backgrounds), so it needs
no shared data; the shared-data test checks the background exclusion on the real scans.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("xraydb")
pytest.importorskip("scipy")

from model.cli import main
from training.xray_eval import (
    ScoredImage,
    iou,
    screening_report,
    threshold_for,
    wilson,
)
from training.xray_materials import (
    HIGH_BAND_KEV,
    LOW_BAND_KEV,
    MATERIALS,
    REFERENCE_MATERIALS,
    band_transmission,
    organic_scale,
)
from training.xray_synth import (
    Palette,
    cut_out_object,
    matching_backgrounds,
    thickness_from_mask,
)

# NIST XCOM / ICRU-44 mu/rho (cm2/g) from ../shared/reference/xray-and-dicos.md
REFERENCE_MU_RHO = {
    "ivory_bone": {40: 0.6655, 60: 0.3148, 80: 0.2229, 100: 0.1855, 150: 0.1480},
    "water": {40: 0.2683, 60: 0.2059, 80: 0.1837, 100: 0.1707, 150: 0.1505},
}


def test_xraydb_reproduces_the_reference_attenuation() -> None:
    materials = {"ivory_bone": MATERIALS["ivory_bone"], "water": REFERENCE_MATERIALS["water"]}
    for name, table in REFERENCE_MU_RHO.items():
        for energy, expected in table.items():
            got = materials[name].mass_attenuation(energy)
            assert got == pytest.approx(expected, rel=0.01), (name, energy, got)


def test_beer_lambert_and_dual_energy_ordering() -> None:
    bone, wood = MATERIALS["ivory_bone"], MATERIALS["wood"]
    thickness = np.array([0.0, 1.0, 5.0])
    high = band_transmission(bone, thickness, HIGH_BAND_KEV)
    low = band_transmission(bone, thickness, LOW_BAND_KEV)
    assert high[0] == pytest.approx(1.0) and low[0] == pytest.approx(1.0)
    assert np.all(np.diff(high) < 0) and np.all(low[1:] < high[1:])  # low energy absorbed more
    mu = bone.mass_attenuation(110) * bone.density
    assert band_transmission(bone, np.array([1.0]), (110.0,))[0] == pytest.approx(np.exp(-mu))
    # organic materials sit at the orange end, bone at the blue end, porcelain between
    assert organic_scale(wood) < 0.1 and organic_scale(MATERIALS["leather"]) < 0.1
    assert organic_scale(MATERIALS["keratin"]) < 0.1
    assert organic_scale(bone) > 0.9
    assert 0.3 < organic_scale(MATERIALS["porcelain"]) < 0.95


def test_cut_out_and_thickness() -> None:
    photo = Image.new("RGB", (120, 100), (245, 245, 240))
    ImageDraw.Draw(photo).ellipse((30, 20, 90, 80), fill=(200, 180, 150))
    mask = cut_out_object(photo)
    assert mask is not None
    assert 0.2 < mask.mean() < 0.35 and mask[50, 60] and not mask[5, 5]
    thickness = thickness_from_mask(mask, 4.0)
    assert thickness.max() == pytest.approx(4.0)
    assert thickness[50, 60] > thickness[50, 33] > 0 and thickness[5, 5] == 0
    busy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 120, 3), np.uint8))
    assert cut_out_object(busy) is None  # no plain background: refused


def test_screening_metrics() -> None:
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    negatives = np.linspace(0.0, 0.99, 100)
    threshold = threshold_for(negatives, 0.05)
    assert int((negatives >= threshold).sum()) == 5
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)

    def item(label: str, alarm: float) -> ScoredImage:
        return ScoredImage(Path("x"), label, alarm, "taxon", label, (0, 0, 4, 4), (0, 0, 4, 4))

    composites = [item("plain", a) for a in negatives] + [
        item("ivory_bone", 0.999),
        item("timber", 0.2),
        item("porcelain", 0.999),
    ]
    report = screening_report(composites, [item("plain", 0.999)])
    point = report["operating_points"][1]
    assert point["detection_rate"]["hits"] == 1 and point["detection_rate"]["images"] == 2
    assert point["lookalike_alarm_rate"]["rate"] == 1.0
    assert point["false_alarms_real_scans"]["rate"] == 1.0
    assert report["boxes"]["mean_iou"] == 1.0


def _museum_photos(folder: Path, count: int, colour: tuple[int, int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        photo = Image.new("RGB", (160, 120), (240, 240, 236))
        x, y = int(rng.integers(20, 50)), int(rng.integers(15, 35))
        ImageDraw.Draw(photo).ellipse((x, y, x + 70, y + 60), fill=colour)
        photo.save(folder / f"object-{seed}-{i}.jpg", quality=95)
    return folder


def _wood_photos(folder: Path, count: int) -> Path:
    (folder / "rosewood").mkdir(parents=True)
    for i in range(count):
        stripes = (np.sin(np.arange(160) / (3 + i)) * 30 + 120).astype(np.uint8)
        pixels = np.stack([np.tile(stripes, (120, 1))] * 3, axis=-1)
        pixels[..., 2] //= 2
        Image.fromarray(pixels).save(folder / "rosewood" / f"wood-{i}.jpg", quality=95)
    return folder


def _backgrounds(folder: Path, count: int) -> Path:
    """Pseudo-colour-like scans: white with orange, green and blue patches."""
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True)
    for i in range(count):
        scan = Image.new("RGB", (200, 160), (250, 250, 250))
        draw = ImageDraw.Draw(scan)
        for colour in ((235, 160, 60), (110, 170, 90), (60, 110, 200)):
            x, y = int(rng.integers(0, 150)), int(rng.integers(0, 110))
            draw.rectangle((x, y, x + 40, y + 40), fill=colour)
        scan.save(folder / f"scan-{i:03d}.jpg", quality=92)
    return folder


@pytest.mark.slow
@pytest.mark.train
def test_synth_train_evaluate_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    ivory = _museum_photos(tmp_path / "ivory", 14, (235, 225, 200), 1)
    porcelain = _museum_photos(tmp_path / "porcelain", 14, (120, 140, 190), 3)
    timber = _wood_photos(tmp_path / "timber", 10)
    backgrounds = _backgrounds(tmp_path / "backgrounds", 30)
    out = tmp_path / "synth"
    code = main(
        [
            "xray",
            "synth",
            "--out",
            str(out),
            "--ivory",
            str(ivory),
            "--porcelain",
            str(porcelain),
            "--timber",
            str(timber),
            "--backgrounds",
            str(backgrounds),
            "--per-class",
            "8",
            "--test-per-class",
            "5",
            "--max-side",
            "200",
        ]
    )
    assert code == 0
    summary = json.loads((out / "synth.json").read_text())
    assert summary["images"] == {"train": 32, "test": 20}
    rows = {
        split: list(csv.DictReader((out / f"{split}.csv").open())) for split in ("train", "test")
    }
    for key in ("background", "object_source"):
        train = {r[key] for r in rows["train"] if r[key]}
        test = {r[key] for r in rows["test"] if r[key]}
        assert train and test and not train & test, key
    placed = [r for r in rows["train"] if r["label"] != "plain"]
    assert all(r["box"] and r["material"] != "none" for r in placed)
    assert {r["material"] for r in rows["train"]} == {"ivory_bone", "wood", "porcelain", "none"}
    # the object darkens the scan inside its box: multiplicative projection never brightens
    row = placed[0]
    with Image.open(out / row["path"]) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    x0, y0, x1, y1 = (int(v) for v in row["box"].split())
    assert pixels[y0:y1, x0:x1].mean() < 250

    label_map = Path(__file__).resolve().parents[2] / "training" / "label_maps" / "xray.tsv"
    code = main(
        [
            "train",
            "--data",
            str(out / "train.csv"),
            "--label-map",
            str(label_map),
            "--out",
            str(tmp_path / "weights"),
            "--version",
            "xray-test",
            "--modality",
            "xray",
            "--augment",
            "xray-pseudocolour",
            "--crop",
            "squash",
            "--mode",
            "head",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--calibration-images",
            "8",
            "--no-int8",
            "--threads",
            "2",
            "--input-size",
            "128",
            "--limitation",
            "Trained on synthetic composites only.",
        ]
    )
    assert code == 0
    manifest = json.loads((tmp_path / "weights" / "xray-test" / "manifest.json").read_text())
    assert manifest["modalities"] == ["xray"]
    assert manifest["preprocess"]["crop"] == "squash"
    assert manifest["training"]["synthetic_data"][0]["images"] == {"train": 32, "test": 20}

    report_file = tmp_path / "screening.json"
    code = main(
        [
            "xray",
            "evaluate",
            "--bundle",
            str(tmp_path / "weights" / "xray-test"),
            "--data",
            str(out / "test.csv"),
            "--real",
            str(backgrounds),
            "--out",
            str(report_file),
        ]
    )
    assert code == 0
    report = json.loads(report_file.read_text())
    assert [p["target_false_alarm_rate"] for p in report["operating_points"]] == [0.01, 0.05]
    assert report["operating_points"][0]["detection_rate"]["images"] == 10
    assert report["real_scans"]["images"] == 30
    assert report["boxes"]["objects"] == 15


def test_synth_refuses_missing_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["xray", "synth", "--out", str(tmp_path / "o"), "--backgrounds", str(tmp_path / "none")]
    )
    assert code != 0
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.shared_data
def test_backgrounds_matching_the_false_alarm_scans_are_found(
    shared_data: Path, tmp_path: Path
) -> None:
    baggage = sorted((shared_data / "xray-baggage").glob("*/*.jpg"))
    backgrounds = sorted((shared_data / "xray-backgrounds" / "scans").glob("*.jpg"))
    if not baggage or not backgrounds:
        pytest.skip("xray-baggage or xray-backgrounds missing")
    # a scan is found as a match of itself resized and re-encoded, and others are not
    copy = tmp_path / "copy.jpg"
    with Image.open(baggage[0]) as image:
        image.resize((image.width * 2 // 3, image.height * 2 // 3)).save(copy, quality=70)
    assert matching_backgrounds([copy, *backgrounds[:10]], baggage[:1]) == {copy}


@pytest.mark.shared_data
def test_palette_fitted_on_real_scans_is_orange_green_blue(shared_data: Path) -> None:
    scans = sorted((shared_data / "xray-backgrounds" / "scans").glob("*.jpg"))[:10]
    if not scans:
        pytest.skip("xray-backgrounds missing")
    palette = Palette.fit(scans)
    white = np.exp(-np.asarray(palette.orange))  # colour at unit attenuation
    assert white[0] > white[1] > white[2]  # orange: red > green > blue
    blue = np.exp(-np.asarray(palette.blue))
    assert blue[2] > blue[0]
