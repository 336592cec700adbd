"""``cites-vision retrain`` on generated colour images (CPU, tiny): warm start, labels kept and
added, replay, the gate, and the errors a trainer can meet.

One module-scoped base bundle (head-only, 96 px) is trained on three colours; the "feedback"
adds a fourth colour under a taxon the base lacks (``manis``, enough images for a new label), a
few images of a name that is no taxon (left out) and more images of the known colours.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("timm")

from model.bundle import load_bundle
from model.cli import main

pytestmark = [pytest.mark.train, pytest.mark.slow]

BASE_COLOURS = {"ivory": (220, 40, 40), "ceramic": (40, 40, 220), "rosewood": (40, 200, 40)}
NEW_COLOUR = (230, 210, 40)  # yellow: "manis" (pangolin scales) in this test
LABEL_MAP = (
    "dataset_class\tlabel_id\tlabel_name\ttaxon_id\tkind\n"
    "ivory\tivory\tIvory\tivory-elephant-walrus\tcites\n"
    "ceramic\tceramic\tCeramic\tceramic-porcelain\tlookalike\n"
    "rosewood\trosewood\tRosewood\tdalbergia\tcites\n"
)


def noisy_images(folder: Path, colour: tuple[int, int, int], count: int, seed: int) -> list[Path]:
    """``count`` 48x48 PNGs of one noisy colour."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        base = np.array(colour, dtype=np.float64) + rng.normal(0, 15, 3)
        pixels = base + rng.normal(0, 20, (48, 48, 3))
        path = folder / f"{seed}-{i}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def feedback_manifest(root: Path, rows: list[tuple[Path, str]]) -> Path:
    """A feedback-style CSV manifest (one case per image)."""
    lines = ["path,label,modality,source,case_id"]
    for i, (path, label) in enumerate(rows):
        lines.append(f"{path},{label},camera,feedback:{i},case-{i}")
    manifest = root / "feedback.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A head-only base bundle at 96 px, trained with its data at known paths."""
    root = tmp_path_factory.mktemp("retrain")
    data = root / "colours"
    for i, (name, colour) in enumerate(BASE_COLOURS.items()):
        noisy_images(data / name, colour, 14, seed=i)
    label_map = root / "map.tsv"
    label_map.write_text(LABEL_MAP)
    args = ["train", "--data", str(data), "--label-map", str(label_map)]
    args += ["--out", str(root / "weights"), "--version", "base", "--mode", "head"]
    args += ["--input-size", "96", "--cache-dir", str(root / "cache"), "--no-int8"]
    assert main([*args, "--threads", "2"]) == 0
    return {"root": root, "data": data, "bundle": root / "weights" / "base"}


def _new_data(root: Path, new_count: int = 10) -> Path:
    rows: list[tuple[Path, str]] = []
    for i, (name, colour) in enumerate(BASE_COLOURS.items()):
        rows += [(p, name) for p in noisy_images(root / "fb" / name, colour, 4, seed=20 + i)]
    rows += [(p, "manis") for p in noisy_images(root / "fb" / "manis", NEW_COLOUR, new_count, 30)]
    rows += [(p, "unicorn-horn") for p in noisy_images(root / "fb" / "odd", (90, 90, 90), 3, 31)]
    return feedback_manifest(root, rows)


def test_base_bundle_carries_torch_weights(base: dict[str, Path]) -> None:
    bundle = load_bundle(base["bundle"])
    assert "model.pt" in bundle.manifest.files
    import torch

    saved = torch.load(base["bundle"] / "model.pt", weights_only=True)
    assert saved["labels"] == ["ivory", "ceramic", "rosewood"]
    assert saved["state_dict"]["classifier.weight"].shape[0] == 3


def test_retrain_keeps_labels_adds_a_taxon_and_gates(
    base: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feedback = _new_data(tmp_path)
    out = tmp_path / "weights"
    code = main(
        [
            "retrain",
            "--base",
            str(base["bundle"]),
            "--data",
            str(feedback),
            "--out",
            str(out),
            "--version",
            "v2",
            "--head-only",
            "--min-new-label-images",
            "8",
            "--replay",
            "12",
            "--threads",
            "2",
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    bundle = load_bundle(out / "v2")
    ids = [label.id for label in bundle.labels]
    assert ids == ["ivory", "ceramic", "rosewood", "manis"]  # base positions kept
    manis = bundle.labels[3]
    assert manis.kind == "cites" and manis.taxon_id == "manis"
    retrain = bundle.manifest.training["retrain"]
    assert retrain["base"] == "base"
    assert retrain["labels"]["added"] == {"manis": 10}
    assert retrain["labels"]["left_out"]["unicorn-horn"]["images"] == 3
    assert 0 < retrain["replayed_images"] <= 12
    assert bundle.manifest.provenance["parent_version"] == "base"
    gate = bundle.manifest.metrics["gate"]
    a = gate["comparisons"]["a_base_test_set"]
    assert a is not None and a["images"] > 0
    assert gate["recommended"] is True and bundle.manifest.recommended is True
    assert report["recommended"] is True
    assert "(a) base's test set" in (out / "v2" / "gate.md").read_text()
    assert "model.pt" in bundle.manifest.files
    # the new colour is now recognised
    from model.predictor import Predictor

    fresh = noisy_images(tmp_path / "fresh", NEW_COLOUR, 2, seed=99)
    predictions = Predictor(out / "v2").predict_bytes([p.read_bytes() for p in fresh])
    assert [p.top[0].label.id for p in predictions] == ["manis", "manis"]


def test_label_plan_keeps_base_order_and_leaves_out_small_or_unknown_names(
    base: dict[str, Path], tmp_path: Path
) -> None:
    from training.data import load_manifest
    from training.retrain import base_label_map, plan_labels

    samples = load_manifest(_new_data(tmp_path, new_count=3))
    plan = plan_labels(base_label_map(load_bundle(base["bundle"])), samples, min_images=20)
    assert [label.id for label in plan.label_map.labels] == ["ivory", "ceramic", "rosewood"]
    assert plan.left_out == {
        "manis": {"images": 3, "reason": "fewer than 20 images for a new label"},
        "unicorn-horn": {
            "images": 3,
            "reason": "not a label of the base nor a taxon of the taxonomy",
        },
    }
    assert len(plan.samples) == 12  # the known colours only
    # a feedback row naming a base label's taxon id maps to that label
    assert plan.label_map.index_of("dalbergia") == 2


def test_a_bundle_without_torch_weights_is_refused_clearly(
    base: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.factories import make_tiny_bundle

    old = make_tiny_bundle(tmp_path / "old", version="old")
    code = main(["retrain", "--base", str(old), "--data", str(base["data"])])
    assert code != 0
    err = capsys.readouterr().err
    assert "model.pt" in err and "cites-vision train --config" in err


def test_force_needs_a_reason_and_activate_needs_a_key(
    base: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CITES_API_KEY", raising=False)
    common = ["retrain", "--base", str(base["bundle"]), "--data", str(base["data"])]
    assert main([*common, "--force"]) != 0
    assert "--why" in capsys.readouterr().err
    assert main([*common, "--activate", "http://127.0.0.1:9"]) != 0
    assert "--key" in capsys.readouterr().err


def test_missing_base_data_is_named(
    base: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = tmp_path / "gone"
    args = ["retrain", "--base", str(base["bundle"]), "--data", str(base["data"])]
    code = main([*args, "--out", str(tmp_path / "w"), "--replay-data", str(gone)])
    assert code != 0
    err = capsys.readouterr().err
    assert str(gone) in err and "--replay-data" in err


def test_replay_defaults_to_everything_in_head_mode_only() -> None:
    from training.retrain import DEFAULT_REPLAY_IMAGES, replay_size

    assert replay_size(None, "head", 1780) == 1780
    assert replay_size(None, "full", 1780) == DEFAULT_REPLAY_IMAGES
    assert replay_size(None, "last", 10) == DEFAULT_REPLAY_IMAGES  # subsample caps it at 10
    assert replay_size(12, "head", 1780) == 12
