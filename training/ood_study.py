"""Compare out-of-domain scores on the same splits, from cached features (no training).

``python -m training.ood_study --bundle weights/default --out runs/ood-study``

For the default bundle's data split (same seed and fractions as ``make default-bundle``) it
computes, once and cached:

- the served model's logits and fine-tuned pooled features (ONNX Runtime, as served);
- the ImageNet-pretrained backbone's pooled features (:mod:`training.features`, cached on disk);

for the training, validation and test product photos, their software re-shoots
(:func:`training.open_set.write_reshoots`), the near-domain unknown products
(:func:`training.open_set.near_domain_samples`, ``val``/``test``) and the unrelated ImageNet
photos. Every score's threshold flags 5% of the clean validation product photos; the method is
chosen on the validation figures (near-domain ``val``, re-shoots of validation photos), and the
test figures are only reported. Writes ``study.json`` and ``study.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from training import data as d
from training.metrics import wilson_interval

logger = logging.getLogger(__name__)

Array = NDArray[np.float64]


@dataclass
class FeatureSet:
    """Served logits, fine-tuned features and pretrained features of one image set."""

    samples: list[d.Sample]
    logits: Array
    tuned: Array
    pretrained: Array


def _served_outputs(bundle_dir: Path, paths: list[Path]) -> tuple[Array, Array]:
    from model.bundle import load_bundle
    from model.predictor import Predictor
    from training.inputs import batches, load_inputs

    bundle = load_bundle(bundle_dir)
    predictor = Predictor(bundle)
    logits: list[NDArray[Any]] = []
    features: list[NDArray[Any]] = []
    for chunk in batches(paths, 32):
        out = predictor._run(load_inputs(chunk, bundle.manifest.preprocess), ("logits", "features"))
        logits.append(out[0])
        features.append(out[1])
    return np.concatenate(logits).astype(np.float64), np.concatenate(features).astype(np.float64)


SHARED_WITH_TRAINING = ("train", "val", "test")
"""Sets whose pretrained features go through :mod:`training.features` (the on-disk cache that
``make default-bundle`` reads too); the others run the pretrained backbone in ONNX Runtime,
several times faster on a busy CPU (the features agree to about 1e-5)."""


def _onnx_pretrained(pretrained: Any, cache: Path, paths: list[Path]) -> NDArray[np.float32]:
    import onnxruntime as ort
    import torch

    from model.preprocess import PreprocessConfig
    from training.backbone import PooledFeatures, export_module
    from training.inputs import batches, load_inputs

    model_path = cache / "pretrained-pooled.onnx"
    if not model_path.is_file():
        contiguous = pretrained.eval().to(memory_format=torch.contiguous_format)
        export_module(
            PooledFeatures(contiguous).eval(), model_path, ["reference_features"], 224, 18, None
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    chunks = [
        session.run(["reference_features"], {"image": load_inputs(chunk, PreprocessConfig())})[0]
        for chunk in batches(paths, 32)
    ]
    return np.concatenate(chunks).astype(np.float32)


def _feature_set(
    name: str, samples: list[d.Sample], bundle_dir: Path, cache: Path, pretrained: Any
) -> FeatureSet:
    from model.preprocess import PreprocessConfig
    from training.features import extract_features

    target = cache / f"{name}.npz"
    if target.is_file():
        with np.load(target) as stored:
            return FeatureSet(
                samples, stored["logits"], stored["tuned"], stored["pretrained"].astype(np.float64)
            )
    paths = [s.path for s in samples]
    logits, tuned = _served_outputs(bundle_dir, paths)
    if name in SHARED_WITH_TRAINING:
        pre = extract_features(pretrained, paths, PreprocessConfig(), desc=f"{name} pretrained")
    else:
        pre = _onnx_pretrained(pretrained, cache, paths)
    np.savez(target, logits=logits, tuned=tuned, pretrained=pre)
    return FeatureSet(samples, logits, tuned, pre.astype(np.float64))


def _normalise(x: Array) -> Array:
    out: Array = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return out


def knn_score(bank: Array, k: int) -> Callable[[Array], Array]:
    """1 - mean cosine similarity to the ``k`` nearest rows of ``bank``."""
    reference = _normalise(bank)

    def score(x: Array) -> Array:
        sims = _normalise(x) @ reference.T
        top = -np.sort(-sims, axis=1)[:, :k]
        out: Array = 1.0 - top.mean(axis=1)
        return out

    return score


def energy(logits: Array) -> Array:
    """Negative log-sum-exp of the logits (higher: less like training)."""
    top = logits.max(axis=1, keepdims=True)
    out: Array = -(top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))
    return out


def max_softmax(logits: Array) -> Array:
    """1 - maximum softmax probability."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    out: Array = 1.0 - p.max(axis=1)
    return out


def _rate(flags: NDArray[np.bool_]) -> dict[str, Any]:
    n = int(flags.size)
    hits = int(flags.sum())
    low, high = wilson_interval(hits, n)
    return {"rate": round(hits / n, 4) if n else None, "ci95": [round(low, 3), round(high, 3)]}


def run(bundle_dir: Path, data_dir: Path, out: Path, cache: Path) -> dict[str, Any]:
    """Compute every score on every set; returns (and writes) the study."""
    from model.bundle import load_bundle
    from model.ood import fit_ood
    from training.backbone import create_model
    from training.config import TrainConfig
    from training.open_set import near_domain_samples, unrelated_samples, write_reshoots
    from training.pipeline import prepare_data

    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(
        data=(str(data_dir / "met-ivory"), str(data_dir / "wood-trade-groups")),
        label_map="training/label_maps/default.tsv",
    )
    _, _, splits = prepare_data(config, load_bundle(bundle_dir))  # the bundle's own split
    imagenet = data_dir / "imagenet-sample"
    near = near_domain_samples(imagenet)
    all_unrelated = unrelated_samples(imagenet)
    backgrounds = [s.path for s in all_unrelated]
    unrelated = all_unrelated[::3]  # a third: compute is scarce, intervals stay narrow
    train_subset = splits["train"][::3]
    sets: dict[str, list[d.Sample]] = {
        "train": splits["train"],
        "val": splits["val"],
        "test": splits["test"],
        "near_val": near["val"],
        "near_test": near["test"],
        "unrelated": unrelated,
        "reshoot_train": write_reshoots(train_subset, backgrounds, cache / "reshoots", seed=1),
        "reshoot_val": write_reshoots(splits["val"], backgrounds, cache / "reshoots", seed=0),
        "reshoot_test": write_reshoots(splits["test"], backgrounds, cache / "reshoots", seed=0),
    }
    pretrained = create_model(1, pretrained=True)
    feats = {
        name: _feature_set(name, samples, bundle_dir, cache, pretrained)
        for name, samples in sets.items()
    }
    train = feats["train"]
    targets = d.encode_labels(
        train.samples, d.read_label_map(Path("training/label_maps/default.tsv"))
    )
    maha_tuned = fit_ood(train.tuned, targets)
    maha_pre = fit_ood(train.pretrained, targets)
    both_pre = np.concatenate([train.pretrained, feats["reshoot_train"].pretrained])
    both_targets = np.concatenate([targets, targets[::3]])
    maha_pre_aug = fit_ood(both_pre, both_targets)
    knn = {
        (where, k): knn_score(bank, k)
        for where, bank in (
            ("tuned", train.tuned),
            ("pretrained", train.pretrained),
            ("pretrained+reshoots", both_pre),
        )
        for k in (1, 10)
    }

    def on(where: str, k: int) -> Callable[[FeatureSet], Array]:
        scorer = knn[(where, k)]
        return lambda f: scorer(f.tuned if where == "tuned" else f.pretrained)

    methods: dict[str, Callable[[FeatureSet], Array]] = {
        "mahalanobis_pca, fine-tuned features (served today)": lambda f: maha_tuned.score(
            f.tuned
        ).astype(np.float64),
        "max softmax": lambda f: max_softmax(f.logits),
        "energy": lambda f: energy(f.logits),
        "kNN k=1, fine-tuned features": on("tuned", 1),
        "kNN k=10, fine-tuned features": on("tuned", 10),
        "mahalanobis_pca, pretrained features": lambda f: maha_pre.score(f.pretrained).astype(
            np.float64
        ),
        "kNN k=1, pretrained features": on("pretrained", 1),
        "kNN k=10, pretrained features": on("pretrained", 10),
        "mahalanobis_pca, pretrained features, bank with re-shoots": lambda f: maha_pre_aug.score(
            f.pretrained
        ).astype(np.float64),
        "kNN k=1, pretrained features, bank with re-shoots": on("pretrained+reshoots", 1),
        "kNN k=10, pretrained features, bank with re-shoots": on("pretrained+reshoots", 10),
    }
    rows: dict[str, Any] = {}
    for name, method in methods.items():
        threshold = float(np.quantile(method(feats["val"]), 0.95, method="higher"))
        row: dict[str, Any] = {"threshold": threshold}
        for set_name in ("val", "test", "near_val", "near_test", "unrelated"):
            row[set_name] = _rate(method(feats[set_name]) > threshold)
        for set_name in ("reshoot_val", "reshoot_test"):
            row[set_name] = _rate(method(feats[set_name]) > threshold)
        rows[name] = row
        logger.info("%s: %s", name, row)
    study = {"bundle": str(bundle_dir), "sizes": {k: len(v) for k, v in sets.items()}}
    study["methods"] = rows
    (out / "study.json").write_text(json.dumps(study, indent=2) + "\n", encoding="utf-8")
    lines = [
        "| score | near-domain val | near-domain test | unrelated | known val | known test "
        "| re-shoots val | re-shoots test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        cells = [
            f"{row[k]['rate']:.2f} [{row[k]['ci95'][0]:.2f}, {row[k]['ci95'][1]:.2f}]"
            for k in (
                "near_val",
                "near_test",
                "unrelated",
                "val",
                "test",
                "reshoot_val",
                "reshoot_test",
            )
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (out / "study.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return study


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("weights/default"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/ood-study"))
    parser.add_argument("--cache", type=Path, default=Path("runs/ood-study/cache"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(args.bundle, args.data, args.out, args.cache)
    print((args.out / "study.md").read_text(encoding="utf-8"))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
