"""End to end: train -> export -> load -> predict on tiny generated images (CPU, < 2 min).

One module-scoped training run (``last`` mode for four epochs, pretrained backbone, cached
features in a temporary folder) serves every test here; ``evaluate``, ``compare`` and the
predictor then run on the bundle it wrote.
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
from model.digest import sha256_file
from model.predictor import Predictor
from tests.factories import TINY_LABELS, make_tiny_bundle
from training import data as d

pytestmark = [pytest.mark.train, pytest.mark.slow]

COLOURS = {"ivory": (220, 40, 40), "ceramic": (40, 40, 220), "rosewood": (40, 200, 40)}
LABEL_MAP = (
    "dataset_class\tlabel_id\tlabel_name\ttaxon_id\tkind\n"
    "ivory\tivory\tIvory\tivory-elephant-walrus\tcites\n"
    "ceramic\tceramic\tCeramic\tceramic-porcelain\tlookalike\n"
    "rosewood\trosewood\tRosewood\tdalbergia\tcites\n"
)


def make_colour_set(root: Path, per_class: int = 16, size: int = 64, seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: noisy images of one dominant colour per class."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(colour, dtype=np.float64) + rng.normal(0, 20, 3)
            pixels = base + rng.normal(0, 25, (size, size, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def make_grey_set(root: Path, count: int = 12, seed: int = 1) -> Path:
    """Images unlike the training set (grey noise with stripes), for the OOD measurement."""
    rng = np.random.default_rng(seed)
    folder = root / "other"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 255, (64, 64, 1)).repeat(3, axis=2).astype(np.uint8)
        pixels[:, :: (i % 5) + 2] = 255
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train one head-only bundle on generated images; return the paths involved."""
    root = tmp_path_factory.mktemp("train")
    data = make_colour_set(root / "colours")
    grey = make_grey_set(root / "grey")
    label_map = root / "map.tsv"
    label_map.write_text(LABEL_MAP)
    base = make_tiny_bundle(root / "bases", version="tiny-swapped", labels=_swapped())
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--label-map",
            str(label_map),
            "--out",
            str(root / "weights"),
            "--version",
            "v1",
            "--mode",
            "last",
            "--epochs",
            "4",
            "--views",
            "1",
            "--cache-dir",
            str(root / "cache"),
            "--calibration-images",
            "8",
            "--ood-data",
            str(grey),
            "--base",
            str(base),
            "--threads",
            "2",
        ]
    )
    assert code == 0
    return {"root": root, "data": data, "bundle": root / "weights" / "v1", "base": base}


def _swapped() -> tuple:
    """The tiny bundle's labels with ivory and ceramic swapped: it answers red -> ceramic."""
    ivory, ceramic, rosewood = TINY_LABELS
    return (
        type(ivory)(0, ceramic.id, ceramic.name, ceramic.taxon_id, ceramic.kind),
        type(ivory)(1, ivory.id, ivory.name, ivory.taxon_id, ivory.kind),
        rosewood,
    )


def test_bundle_is_complete_and_records_its_training(trained: dict[str, Path]) -> None:
    bundle = load_bundle(trained["bundle"])
    manifest = bundle.manifest
    assert [label.id for label in bundle.labels] == ["ivory", "ceramic", "rosewood"]
    assert manifest.modalities == ("camera",)
    assert manifest.models["fp32"] == "model.onnx"
    assert manifest.ood is not None and manifest.ood.threshold > 0
    assert "config.json" in manifest.files and "validation.json" in manifest.files
    config = json.loads((trained["bundle"] / "config.json").read_text())
    assert config["command"].startswith("cites-vision train --data")
    assert config["config"]["mode"] == "last"
    assert [e["epoch"] for e in manifest.training["epochs"]] == [1, 2, 3, 4]
    assert manifest.training["best_epoch"] in (1, 2, 3, 4)
    assert manifest.training["label_map"]["classes"]["ivory"] == "ivory"
    assert manifest.metrics["fp32_check"]["disagreements"] == 0
    assert manifest.metrics["validation"]["accuracy"] >= 0.99
    assert 0 < manifest.temperature < 100
    int8 = manifest.metrics["int8"]
    assert int8["written"] == (manifest.models["int8"] is not None)
    assert "INT8" in int8["reason"]
    # The temperature and thresholds belong to the model the service runs.
    calibration = manifest.metrics["calibration"]
    assert calibration["temperature"] == manifest.temperature
    assert int8["written"]  # the colour task quantises without loss
    assert calibration["fitted_on"].startswith("INT8")
    # --base: the swapped tiny bundle is worse, so the new bundle stays recommended
    comparison = manifest.metrics["comparison_with_base"]
    assert comparison["b_not_worse"] is True and manifest.recommended is True
    assert manifest.provenance["parent_version"] == "tiny-swapped"
    assert 0.0 <= manifest.metrics["ood"]["outside_flagged"] <= 1.0


def test_predictor_answers_on_new_images(trained: dict[str, Path], tmp_path: Path) -> None:
    fresh = make_colour_set(tmp_path / "fresh", per_class=2, seed=7)
    predictor = Predictor(trained["bundle"])
    paths = sorted(fresh.glob("*/*.png"))
    predictions = predictor.predict_bytes([p.read_bytes() for p in paths])
    for path, prediction in zip(paths, predictions, strict=True):
        assert not isinstance(prediction, Exception)
        assert prediction.top[0].label.id == path.parent.name
        # by design about 5% of in-domain images are flagged outside the training domain
        assert prediction.decision.kind in (
            "taxon",
            "lookalike",
            "uncertain",
            "outside_training_domain",
        )


def test_evaluate_json_has_the_promised_keys(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(
        [
            "evaluate",
            "--bundle",
            str(trained["bundle"]),
            "--data",
            str(trained["data"]),
            "--json",
            "--out",
            str(tmp_path / "report"),
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "balanced_accuracy", "ece", "images", "per_class"):
        assert key in report
    assert report["images"] == 48
    assert report["accuracy"] >= 0.95
    assert set(report["per_class"]) == set(COLOURS)
    assert (tmp_path / "report" / "evaluation-reliability.png").stat().st_size > 0
    assert (tmp_path / "report" / "evaluation.md").read_text().startswith("# ")


def test_evaluate_refuses_unknown_classes(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "odd" / "pangolin").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "odd" / "pangolin" / "a.png")
    code = main(["evaluate", "--bundle", str(trained["bundle"]), "--data", str(tmp_path / "odd")])
    assert code != 0
    assert "pangolin" in capsys.readouterr().err


def test_compare_two_bundles(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "compare",
            "--a",
            str(trained["base"]),
            "--b",
            str(trained["bundle"]),
            "--data",
            str(trained["data"]),
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 48
    assert result["b"]["accuracy"] > result["a"]["accuracy"]
    assert result["mcnemar"]["b_right_a_wrong"] >= 16  # every ivory image flips
    assert result["mcnemar"]["p_value"] < 0.001
    assert result["b_not_worse"] is True


def _head_run_at_128(trained: dict[str, Path], out: Path, version: str, *extra: str) -> int:
    """``train --mode head --input-size 128`` on the module's data and feature cache."""
    return main(
        [
            "train",
            "--data",
            str(trained["data"]),
            "--label-map",
            str(trained["root"] / "map.tsv"),
            "--out",
            str(out),
            "--version",
            version,
            "--mode",
            "head",
            "--input-size",
            "128",
            "--cache-dir",
            str(trained["root"] / "cache"),
            "--no-int8",
            "--threads",
            "2",
            *extra,
        ]
    )


def test_input_size_reaches_the_bundle_and_the_predictor(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    """A head-only run at 128 px records 128 in the manifest, and its model takes 128 px."""
    cache = trained["root"] / "cache"
    before = set(cache.glob("*.npz"))
    code = _head_run_at_128(trained, tmp_path / "weights", "px128")
    assert code == 0
    bundle = load_bundle(tmp_path / "weights" / "px128")
    assert bundle.manifest.preprocess.input_size == 128
    assert bundle.manifest.preprocess.resize_shorter == round(128 * 256 / 224)
    config = json.loads((tmp_path / "weights" / "px128" / "config.json").read_text())
    assert config["config"]["input_size"] == 128 and "--input-size 128" in config["command"]
    # the 224 px features of the module's run are not reused: a cache file of its own
    assert before and len(set(cache.glob("*.npz")) - before) == 1

    predictor = Predictor(tmp_path / "weights" / "px128")
    assert predictor.preprocess.input_size == 128
    fresh = make_colour_set(tmp_path / "fresh", per_class=1, seed=9)
    paths = sorted(fresh.glob("*/*.png"))
    arrays = [predictor.preprocess_bytes(p.read_bytes()) for p in paths]
    assert all(a.shape == (3, 128, 128) for a in arrays)
    predictions = predictor.predict_arrays(np.stack(arrays))
    assert [p.top[0].label.id for p in predictions] == [p.parent.name for p in paths]
    assert predictor.heatmap(arrays[0]).shape == (4, 4)  # 128 / 32
    with pytest.raises(ValueError, match="128"):
        predictor.predict_arrays(np.zeros((1, 3, 224, 224), dtype=np.float32))


def test_backbone_choice_reaches_the_bundle_and_its_warm_start(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    """``--backbone lite1`` builds on EfficientNet-Lite1: the manifest, config.json and model.pt
    name it, the resize keeps Lite1's own ratio (272 for 240), and a warm start from the bundle
    rebuilds Lite1 (not the default Lite0)."""
    from training.pipeline import warm_start_model

    code = _head_run_at_128(trained, tmp_path / "weights", "lite1", "--backbone", "lite1")
    assert code == 0
    folder = tmp_path / "weights" / "lite1"
    bundle = load_bundle(folder)
    assert bundle.manifest.backbone == "tf_efficientnet_lite1"
    assert bundle.manifest.preprocess.resize_shorter == round(128 * 272 / 240)
    config = json.loads((folder / "config.json").read_text())
    assert config["config"]["backbone"] == "tf_efficientnet_lite1"
    warm = warm_start_model(folder, 3)
    assert [len(stage) for stage in warm.blocks] == [1, 3, 3, 4, 4, 5, 1]
    assert Predictor(folder).preprocess.input_size == 128


def test_train_refuses_an_unknown_backbone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--backbone", "resnet50"])
    assert "--backbone" in capsys.readouterr().err
    from training.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="unknown backbone"):
        TrainConfig(data=("x",), backbone="lite9")
    assert TrainConfig(data=("x",), backbone="lite2").preprocess().input_size == 260


@pytest.mark.parametrize("size", ["64", "513", "big"])
def test_train_refuses_a_bad_input_size(
    size: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["train", "--data", str(tmp_path), "--input-size", size])
    except SystemExit as exc:  # argparse refuses what is not a number
        code = exc.code
    assert code not in (0, None)
    assert "--input-size" in capsys.readouterr().err


def test_bundle_records_all_clear_thresholds_and_the_open_set(trained: dict[str, Path]) -> None:
    bundle = load_bundle(trained["bundle"])
    assert bundle.manifest.ood is not None
    assert (bundle.manifest.ood.method, bundle.manifest.ood.features) == (
        "mahalanobis_pca",
        "features",
    )
    metrics = bundle.manifest.metrics
    assert set(metrics["calibration"]["all_clear"]["labels"]) == {"ceramic"}
    taxon = metrics["calibration"]["thresholds"]["taxon"]
    assert taxon["rule"] == "calibrated"
    assert taxon["threshold"] == bundle.manifest.thresholds.taxon
    assert set(taxon["spread"]) == {"threshold", "coverage"}
    assert 0.5 <= taxon["empirical_threshold"] < 1.0
    # the grey folder has no labels.tsv: no near-domain set, but every split's class breakdown
    classes = metrics["open_set"]["validation"]["classes"]
    assert set(classes["by_label"]) == {"ivory", "rosewood"}
    assert "listed_timber" in classes


def test_from_bundle_reuses_the_trained_model_with_a_new_label_map(
    trained: dict[str, Path],
) -> None:
    root = trained["root"]
    changed = root / "map-changed.tsv"
    changed.write_text(
        LABEL_MAP.replace("Ceramic\tceramic-porcelain", "Porcelain\tceramic-porcelain")
    )
    code = main(
        [
            "train",
            "--data",
            str(trained["data"]),
            "--label-map",
            str(changed),
            "--out",
            str(root / "weights"),
            "--version",
            "v1-again",
            "--from-bundle",
            str(trained["bundle"]),
            "--cache-dir",
            str(root / "cache"),
            "--calibration-images",
            "8",
            "--threads",
            "2",
            "--ood-method",
            "knn-reference",
            "--ood-bank-phone",
            "0.5",
        ]
    )
    assert code == 0
    again = load_bundle(root / "weights" / "v1-again")
    # the reference bank holds the training photos and phone captures of about half of them
    assert again.ood is not None
    train_photos = again.manifest.training["splits"]["train"]["images"]
    bank_rows = again.ood.bank.shape[0]  # type: ignore[union-attr]
    assert train_photos < bank_rows < 2 * train_photos
    assert "phone captures of 50%" in again.manifest.metrics["ood"]["fitted_on"]
    original = load_bundle(trained["bundle"])
    assert again.labels[1].name == "Porcelain"
    assert again.manifest.training["mode"] == "from bundle v1"
    # the reused model's training record and loss curve come with it
    assert again.manifest.training["epochs"] == original.manifest.training["epochs"]
    assert again.manifest.training["best_epoch"] == original.manifest.training["best_epoch"]
    assert "training-loss.png" in again.manifest.files
    # two backbones: the fp32 file keeps its weights as float16, checked against float32
    storage = again.manifest.metrics["fp32_storage"]
    assert storage["weights"] == "float16" and storage["initializers"] > 50
    assert storage["top1_agreement"] == 1.0 and storage["bytes_after"] < storage["bytes_before"]
    # kNN on the frozen ImageNet backbone, grafted into the reused graph
    assert again.manifest.ood is not None
    assert (again.manifest.ood.method, again.manifest.ood.features) == (
        "knn_cosine",
        "reference_features",
    )
    images = np.random.default_rng(3).normal(0, 1, (4, 3, 224, 224)).astype(np.float32)
    first = Predictor(original, precision="fp32").predict_arrays(images)
    second = Predictor(again, precision="fp32").predict_arrays(images)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=0.02)
        assert b.ood_score is not None


def test_from_bundle_refuses_other_labels(trained: dict[str, Path]) -> None:
    root = trained["root"]
    other = root / "map-other.tsv"
    other.write_text(LABEL_MAP.replace("rosewood\trosewood\t", "rosewood\tdalbergia-wood\t"))
    code = main(
        [
            "train",
            "--data",
            str(trained["data"]),
            "--label-map",
            str(other),
            "--out",
            str(root / "weights"),
            "--version",
            "v1-other",
            "--from-bundle",
            str(trained["bundle"]),
            "--cache-dir",
            str(root / "cache"),
        ]
    )
    assert code != 0
    assert not (root / "weights" / "v1-other").exists()


def test_from_bundle_keeps_the_bundles_own_split(trained: dict[str, Path]) -> None:
    """Another seed (or grouping) would split the images another way and calibrate and
    measure on the bundle's training images: a reused bundle keeps its recorded split."""
    from training.seen_images import read_seen_images

    root = trained["root"]
    code = main(
        [
            "train",
            "--data",
            str(trained["data"]),
            "--label-map",
            str(root / "map.tsv"),
            "--out",
            str(root / "weights"),
            "--version",
            "v1-reseeded",
            "--seed",
            "7",
            "--from-bundle",
            str(trained["bundle"]),
            "--cache-dir",
            str(root / "cache"),
            "--no-int8",
        ]
    )
    assert code == 0
    again = read_seen_images(load_bundle(root / "weights" / "v1-reseeded"))
    assert again is not None
    assert again == read_seen_images(load_bundle(trained["bundle"]))
    reseeded = d.split_samples(d.load_folder(trained["data"]), seed=7)
    first = read_seen_images(load_bundle(trained["bundle"]))
    assert first is not None
    assert any(  # seed 7 alone would have moved training images to validation or test
        first[sha256_file(s.path)] == "train" for s in [*reseeded["val"], *reseeded["test"]]
    )


def test_the_bundle_records_its_images_and_evaluate_reports_the_overlap(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14: evaluate counts the images the bundle trained or tuned on, warns, and reports
    the figures on the unseen ones separately."""
    from training.seen_images import SEEN_IMAGES_FILE, read_seen_images

    bundle = load_bundle(trained["bundle"])
    assert SEEN_IMAGES_FILE in bundle.manifest.files  # hashed and verified with the bundle
    seen = read_seen_images(bundle)
    assert seen is not None and len(seen) == 48
    with caplog.at_level("WARNING"):
        code = main(
            [
                "evaluate",
                "--bundle",
                str(trained["bundle"]),
                "--data",
                str(trained["data"]),
                "--json",
            ]
        )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    counts = report["seen_by_bundle"]
    assert counts["train"] + counts["val"] + counts["test"] == 48 and counts["unseen"] == 0
    assert counts["train"] > 0 and counts["test"] > 0
    assert report["unseen"]["images"] == counts["test"]
    # figures per capture kind (training.open_set.by_capture): these file names are not a
    # phone camera's, so every image counts as a catalogue photo
    assert report["by_capture"]["catalogue"]["images"] == 48
    assert report["unseen"]["by_capture"]["catalogue"]["images"] == counts["test"]
    assert any("trained" in r.getMessage() and "tuned" in r.getMessage() for r in caplog.records)


def test_evaluate_on_new_images_reports_no_overlap(
    trained: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fresh = make_colour_set(tmp_path / "fresh", per_class=3, seed=99)
    with caplog.at_level("WARNING"):
        code = main(["evaluate", "--bundle", str(trained["bundle"]), "--data", str(fresh)])
    assert code == 0
    out = capsys.readouterr().out
    assert ": all: 9 images" in out and "unseen" not in out
    assert "  catalogue photos: 9, accuracy" in out and "phone photos" not in out
    assert not [r for r in caplog.records if "were trained" in r.getMessage()]


def test_evaluate_help_prints_a_single_percent_sign(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "95%" in text and "%%" not in text


def test_a_warm_started_knn_bundle_keeps_the_imagenet_reference() -> None:
    """``retrain`` warm-starts from the base's fine-tuned weights: the kNN reference must still
    be the ImageNet backbone (and frozen), and a retrain inherits the base's OOD method."""
    import torch

    from training.backbone import create_model
    from training.config import TrainConfig
    from training.pipeline import reference_backbone
    from training.retrain import RECIPE_KEYS

    assert {"ood_method", "ood_k"} <= set(RECIPE_KEYS)
    imagenet = create_model(3, pretrained=True)
    tuned = create_model(3, pretrained=True)
    with torch.no_grad():
        for parameter in tuned.parameters():
            parameter.add_(0.5)  # stands for the base's fine-tuning
    common = {"data": ("x",), "label_map": "m.tsv", "out": "o", "version": "v"}
    knn = TrainConfig(**common, ood_method="knn-reference")
    warm = TrainConfig(**common, ood_method="knn-reference", init_from="weights/base")
    assert reference_backbone(tuned, 3, TrainConfig(**common)) is None
    fresh = reference_backbone(tuned, 3, knn).state_dict()  # before training: a copy
    restarted = reference_backbone(tuned, 3, warm)
    name = next(n for n, _ in imagenet.named_parameters() if n.startswith("conv_stem"))
    assert torch.equal(fresh[name], tuned.state_dict()[name])
    assert torch.equal(restarted.state_dict()[name], imagenet.state_dict()[name])
    assert not any(p.requires_grad for p in restarted.parameters()) and not restarted.training


def test_tighten_raises_all_clear_thresholds_as_a_new_version(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m training.tighten``: the look-alike thresholds are chosen again on the served
    model's validation answers; with a floor of 0.99 for labels guarding fewer than 1000
    images, each guarding look-alike rises to it. Nothing else changes: same model files,
    taxon and shared thresholds, temperature; the figures are measured again and the change is
    recorded. An existing version is not replaced without --overwrite."""
    from training.tighten import main as tighten

    source = load_bundle(trained["bundle"])
    argv = ["--bundle", str(trained["bundle"]), "--data", str(trained["data"])]
    argv += ["--ood-data", str(trained["root"] / "grey")]
    argv += ["--out", str(tmp_path), "--version", "v1-tight"]
    argv += ["--all-clear-floor", "0.99", "--all-clear-min-images", "1000"]
    assert tighten(argv) == 0
    tight = load_bundle(tmp_path / "v1-tight")
    before, after = source.manifest.thresholds, tight.manifest.thresholds
    assert (after.taxon, after.lookalike) == (before.taxon, before.lookalike)
    assert tight.manifest.temperature == source.manifest.temperature
    record = tight.manifest.metrics["calibration"]["all_clear"]["tightened"]
    assert record["from_version"] == "v1" and record["floor"] == 0.99
    assert record["raised"], record
    for label_id, change in record["raised"].items():
        assert change["to"] >= 0.99 > change["from"]
        assert after.lookalike_for(label_id) == change["to"]
    for name in source.manifest.models.values():
        if name:
            assert (tight.path / name).read_bytes() == (source.path / name).read_bytes()
    assert tight.manifest.provenance["parent_version"] == "v1"
    assert "training.tighten" in tight.manifest.provenance["tightened_by"]
    assert set(tight.manifest.metrics["validation"]["decisions"]) <= {
        "taxon",
        "lookalike",
        "uncertain",
        "outside_training_domain",
        "unusable_image",
    }
    assert tighten(argv) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_tightening_never_lowers_a_threshold() -> None:
    from model.decision import Thresholds
    from training.calibrate import AllClearChoice
    from training.tighten import tightened_thresholds

    def choice(label_id: str, threshold: float) -> AllClearChoice:
        return AllClearChoice(label_id, threshold, ("ivory",), 10, 10, 0.0, 0.0, ())

    current = Thresholds(0.6, 0.5, {"other-timber": 0.9})
    new, raised = tightened_thresholds(
        current, {"other-timber": choice("other-timber", 0.8), "ceramic": choice("ceramic", 0.7)}
    )
    assert new.lookalike_by_label == {"other-timber": 0.9, "ceramic": 0.7}
    assert raised == {"ceramic": {"from": 0.5, "to": 0.7}}
    assert new.taxon == 0.6
