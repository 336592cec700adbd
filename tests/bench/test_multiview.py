"""``bench.multiview`` on a tiny bundle and a tiny data folder: the JSON's shape, its figures
in [0, 1], the answers a known tiny model must give, and the validation-only choice rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench import multiview, report
from model.bundle import write_bundle
from model.checks import prepare_input
from model.decision import Thresholds
from model.ood import fit_ood
from model.preprocess import PreprocessConfig
from tests.factories import BLUE, GRAY, GREEN, RED, TINY_LABELS, build_tiny_onnx
from training.data import Sample
from training.open_set import near_domain_names
from training.seen_images import write_seen_images

UNRELATED = ("tench", "goldfish", "ostrich")
OOD_THRESHOLD = 30.0


def _photo(path: Path, color: tuple[int, int, int], seed: int) -> Path:
    """A photo of one colour, each pixel at 40-100% intensity: the detail the quality gate asks
    for; the tiny model reads only the colour."""
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0.4, 1.0, (240, 320, 1)) * np.asarray(color, dtype=np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def _features(path: Path) -> np.ndarray:
    """The tiny model's features of a photo: the channel means of its model input."""
    array, _ = prepare_input(path.read_bytes(), PreprocessConfig())
    return np.asarray(array.mean(axis=(1, 2)), dtype=np.float64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle, data folder): ivory (red) and ceramic (blue) photos in ``met-ivory``, rosewood
    (green) in ``wood-trade-groups``, split val/test alternately in the bundle's
    ``seen-images.tsv``; gray near-domain unknowns and noise "unrelated" photos in
    ``imagenet-sample``."""
    root = tmp_path_factory.mktemp("multiview")
    data = root / "data"
    known: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    sets = (
        ("met-ivory", "ivory", RED, 4),
        ("met-ivory", "non_ivory", BLUE, 2),
        ("wood-trade-groups", "rosewood", GREEN, 2),
    )
    seed = 0
    for set_name, cls, color, count in sets:
        for i in range(count):
            seed += 1
            path = _photo(data / set_name / cls / f"{cls}{i}.png", color, seed)
            known["val" if i % 2 == 0 else "test"].append(Sample(path, cls))
    _photo(data / "met-ivory" / "ivory" / "trained.png", RED, 99)  # a train row: left out
    known["train"].append(Sample(data / "met-ivory" / "ivory" / "trained.png", "ivory"))
    rows = ["index\twnid\tname\tpath"]
    names = [*near_domain_names(), *UNRELATED]
    rng = np.random.default_rng(7)
    for index, name in enumerate(names):
        relative = f"{index:03d}_{name}/{name}.png"
        if name in UNRELATED:
            noise = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
            (data / "imagenet-sample" / relative).parent.mkdir(parents=True)
            Image.fromarray(noise).save(data / "imagenet-sample" / relative)
        else:
            _photo(data / "imagenet-sample" / relative, GRAY, 1000 + index)
        rows.append(f"{index}\tn{index:08d}\t{name}\t{relative}")
    (data / "imagenet-sample" / "labels.tsv").write_text("\n".join(rows) + "\n")

    scratch = root / "scratch"
    scratch.mkdir()
    seen = write_seen_images(scratch / "seen-images.tsv", known)
    # The tiny model's features are the image's channel means: an OOD model fitted around the
    # known photos' features (jittered) keeps them in the domain and sends gray far out.
    samples = [s for rows in known.values() for s in rows]
    means = np.stack([_features(s.path) for s in samples])
    index = {"ivory": 0, "non_ivory": 1, "rosewood": 2}
    jitter = np.random.default_rng(1).normal(0.0, 0.1, (20, *means.shape))
    ood = fit_ood(
        (means + jitter).reshape(-1, 3),
        np.tile([index[s.label] for s in samples], 20),
        components=2,
        normalize=False,
    )
    config = scratch / "config.json"
    config.write_text(json.dumps({"config": {"data": ["x/met-ivory", "x/wood-trade-groups"]}}))
    bundle = write_bundle(
        root / "weights",
        version="tiny-multiview",
        onnx_fp32=build_tiny_onnx(scratch / "model.onnx", len(TINY_LABELS)),
        onnx_int8=None,
        labels=TINY_LABELS,
        preprocess=PreprocessConfig(),
        temperature=1.0,
        thresholds=Thresholds(taxon=0.7, lookalike=0.7),
        modalities=("camera",),
        metrics={},
        training={"label_map": {"classes": {"non_ivory": "ceramic"}}},
        provenance={"command": "tests"},
        limitations=["Synthetic."],
        ood=ood,
        ood_threshold=OOD_THRESHOLD,
        extra_files={"seen-images.tsv": seen, "config.json": config},
    )
    return bundle, data


def _shares(entry: Any) -> list[dict[str, Any]]:
    """Every share (a dict with ``rate``, ``ci95``, ``count``, ``n``) inside ``entry``."""
    if isinstance(entry, dict):
        if {"rate", "ci95", "count", "images"} <= set(entry):
            return [entry]
        return [s for value in entry.values() for s in _shares(value)]
    return []


@pytest.mark.slow  # the whole benchmark on a tiny bundle and data set: ~7 s, not for test-fast
def test_multiview_writes_figures_in_range(setup: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, data = setup
    out = tmp_path / "multiview.json"
    argv = ["--bundle", str(bundle), "--data-dir", str(data), "--out", str(out)]
    argv += ["--work", str(tmp_path / "work"), "--threads", "1", "--limit", "3"]
    assert multiview.main(argv) == 0
    result = json.loads(out.read_text())

    per_split = {"met-ivory": 3, "wood-trade-groups": 1, "near-domain-unknown": 3}
    assert result["objects"] == {"val": per_split, "test": per_split}
    names = [v.name for v in multiview.VARIANTS]
    assert list(result["variants"]) == names
    assert set(result["splits"]) == {"val", "test"}
    for split, rows in result["splits"].items():
        assert list(rows) == names
        counts = result["objects"][split]
        for name, row in rows.items():
            shares = _shares(row)
            assert len(shares) == 10, name  # 3 accuracies, 5 open-set shares, CITES, refused
            for entry in shares:
                low, high = entry["ci95"]
                assert 0.0 <= low <= entry["rate"] <= high <= 1.0, (split, name, entry)
                assert 0 <= entry["count"] <= entry["images"]
            known = counts["met-ivory"] + counts["wood-trade-groups"]
            assert row["accuracy"]["images"] == row["known_flagged"]["images"] == known
            assert row["unknown_flagged"]["images"] == counts["near-domain-unknown"]
            assert row["accuracy_wood-trade-groups"]["images"] == counts["wood-trade-groups"]
            assert 0.0 <= row["ece"] <= 1.0 and row["model_ms_per_object"] > 0
        # The tiny model reads colour: clean red/blue/green photos are right (red and green:
        # a CITES taxon, blue: the look-alike, an all-clear) and the gray unknowns are outside
        # the domain, so flagged and never an all-clear.
        clean = rows["clean single photo"]
        assert clean["accuracy"]["rate"] == 1.0 and clean["refused"]["rate"] == 0.0
        assert clean["known_flagged"]["rate"] == clean["all_clear_on_cites"]["rate"] == 0.0
        assert clean["unknown_flagged"]["rate"] == 1.0
        assert clean["unknown_all_clear"]["rate"] == 0.0
        assert rows["3 views fused, OOD max"]["accuracy"]["rate"] == 1.0
        # every view is one more image through the model
        assert (
            rows["3 views fused, OOD max"]["model_ms_per_object"]
            > rows["1 re-shot view"]["model_ms_per_object"]
        )
        assert "vs_one_view_mcnemar" in rows["2 views fused, OOD mean"]
    chosen = result["recommended"]
    assert chosen["variant"] in names and chosen["views"] >= 1
    assert chosen["validation"] == result["splits"]["val"][chosen["variant"]]
    assert chosen["test"] == result["splits"]["test"][chosen["variant"]]
    assert (tmp_path / "work" / "view3" / "met-ivory").is_dir()  # re-shoots kept in --work


def test_one_view_is_answered_as_a_single_photo(setup: tuple[Path, Path]) -> None:
    """Fusing one view gives that view's own probabilities and decision."""
    from model.predictor import Predictor

    bundle, data = setup
    predictor = Predictor(bundle, threads=1)
    paths = sorted((data / "met-ivory").rglob("*.png"))
    clean = multiview.predict_files(predictor, paths, batch=2)
    one = multiview.answer(predictor, clean, [clean], multiview.VARIANTS[1])
    assert one.kinds == [p.decision.kind for p in clean[0]]
    assert set(one.kinds) == {"taxon", "lookalike"}
    np.testing.assert_allclose(one.probabilities, np.stack([p.probabilities for p in clean[0]]))
    with pytest.raises(ValueError, match="needs 3 views"):
        multiview.answer(predictor, clean, [clean], multiview.VARIANTS[4])


def _row(
    all_clear: float, flagged: float, accuracy: float, unknown_flagged: float = 0.9
) -> dict[str, Any]:
    def entry(rate: float) -> dict[str, Any]:
        return {"rate": rate, "ci95": [0.0, 1.0], "count": 0, "images": 10}

    return {
        "unknown_all_clear": entry(all_clear),
        "unknown_flagged": entry(unknown_flagged),
        "known_flagged": entry(flagged),
        "accuracy": entry(accuracy),
    }


def test_choice_rule_all_clear_then_flagged_then_accuracy() -> None:
    rows = {
        "clean single photo": _row(0.0, 0.0, 1.0),  # a reference, never chosen
        "1 re-shot view": _row(0.1, 0.02, 0.99),
        "2 views fused, OOD max": _row(0.0, 0.08, 0.98),
        "2 views fused, OOD mean": _row(0.0, 0.04, 0.90),
        "3 views fused, OOD max": _row(0.0, 0.05, 0.95),
        "3 views fused, OOD mean": _row(0.0, 0.06, 0.99),
    }
    chosen = multiview.choose(rows)
    assert chosen["variant"] == "3 views fused, OOD max"
    assert (chosen["views"], chosen["ood_fusion"]) == (3, "max")
    # none flags <= 5%: accuracy decides among the lowest all-clear rates
    for name in rows:
        rows[name]["known_flagged"]["rate"] = 0.2
    assert multiview.choose(rows)["variant"] == "3 views fused, OOD mean"
    # max and mean fuse the same probabilities: an accuracy tie goes to fewer flagged
    rows["3 views fused, OOD max"]["accuracy"]["rate"] = 0.99
    rows["3 views fused, OOD mean"]["known_flagged"]["rate"] = 0.1
    assert multiview.choose(rows)["variant"] == "3 views fused, OOD mean"
    # a tie on every figure goes to fewer views, then to OOD max
    tied = {name: _row(0.0, 0.0, 0.9) for name in rows}
    assert multiview.choose(tied)["variant"] == "1 re-shot view"
    del tied["1 re-shot view"]
    assert multiview.choose(tied)["variant"] == "2 views fused, OOD max"
    with pytest.raises(ValueError):
        multiview.choose({"clean single photo": _row(0.0, 0.0, 1.0)})


def test_choice_rule_ranks_unknown_products_flagged_before_known_ones() -> None:
    """Among equal all-clear rates, more unknown products sent to an expert wins over fewer
    known products flagged and over accuracy."""
    rows = {
        "2 views fused, OOD max": _row(0.0, 0.13, 0.88, unknown_flagged=0.933),
        "2 views fused, OOD mean": _row(0.0, 0.10, 0.88, unknown_flagged=0.900),
        "3 views fused, OOD max": _row(0.0, 0.15, 0.87, unknown_flagged=0.967),
    }
    assert multiview.choose(rows)["variant"] == "3 views fused, OOD max"


def test_report_keeps_the_multiview_section() -> None:
    existing = "# x\n\n## Multi-view identification\n\nfused figures\n\n## Other\n\ndropped\n"
    page = report.render({}, existing)
    assert "fused figures" in page and "dropped" not in page
