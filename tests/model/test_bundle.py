"""Bundle writer and loader: round trip, verification, refusal of damaged bundles; labels TSV."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model.bundle import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    BundleError,
    list_bundles,
    load_bundle,
    sha256_file,
)
from model.labels import Label, LabelsError, read_labels, write_labels
from tests.factories import (
    TINY_LABELS,
    copy_bundle,
    make_corrupt_bundle,
    make_incomplete_bundle,
    make_tiny_bundle,
)


def edit_manifest(bundle: Path, change: Any) -> None:
    """Apply ``change(data)`` to the bundle's manifest in place."""
    path = bundle / MANIFEST_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_round_trip(tiny_bundle_ood: Path) -> None:
    bundle = load_bundle(tiny_bundle_ood)
    manifest = bundle.manifest
    assert manifest.schema_version == SCHEMA_VERSION
    assert bundle.version == "tiny-ood" == tiny_bundle_ood.name
    assert bundle.labels == TINY_LABELS
    assert manifest.models == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert manifest.thresholds.taxon == 0.7
    assert manifest.modalities == ("camera",)
    assert manifest.ood is not None and manifest.ood.file == "ood.npz"
    assert bundle.ood is not None and bundle.ood.feature_dim == 3
    assert manifest.provenance["command"] == "tests.factories.make_tiny_bundle"
    assert set(manifest.files) == {
        "model.onnx",
        "model.int8.onnx",
        "labels.tsv",
        "ood.npz",
    }
    for name, digest in manifest.files.items():
        assert sha256_file(tiny_bundle_ood / name) == digest
    assert bundle.model_path("auto").name == "model.int8.onnx"
    assert bundle.model_path("fp32").name == "model.onnx"
    # The manifest written is exactly what to_dict gives back.
    on_disk = json.loads((tiny_bundle_ood / MANIFEST_FILE).read_text())
    assert on_disk == manifest.to_dict()


def test_no_int8_means_auto_is_fp32_and_int8_is_refused(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    assert bundle.model_path("auto").name == "model.onnx"
    with pytest.raises(BundleError, match="no INT8 model"):
        bundle.model_path("int8")


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    bundle = make_corrupt_bundle(tmp_path)
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 .* does not match"):
        load_bundle(bundle)


@pytest.mark.parametrize("missing", ["labels.tsv", "model.onnx", MANIFEST_FILE])
def test_missing_file_is_refused(tmp_path: Path, missing: str) -> None:
    bundle = make_incomplete_bundle(tmp_path, missing=missing)
    with pytest.raises(BundleError, match=rf"{missing.replace('.', '[.]')}.*missing"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("temperature"), "missing key 'temperature'"),
        (lambda d: d.update(temperature="warm"), "key 'temperature' has the wrong type"),
        (lambda d: d.update(recommended=1), "key 'recommended' has the wrong type"),
        (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
        (lambda d: d.update(colour="blue"), r"unknown keys \['colour'\]"),
        (lambda d: d.update(modalities=["sonar"]), "unknown modality 'sonar'"),
        (lambda d: d["thresholds"].update(taxon=2), "key 'thresholds'"),
        (lambda d: d["preprocess"].pop("crop"), "key 'preprocess'.*'crop'"),
        (lambda d: d["models"].update(fp32="../model.onnx"), "not a plain file name"),
        (lambda d: d["files"].pop("labels.tsv"), "'labels.tsv' is used but not listed"),
    ],
)
def test_bad_manifest_is_refused(
    tiny_bundle: Path, tmp_path: Path, change: Any, message: str
) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path, "tiny-bad")
    edit_manifest(bundle, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_manifest_that_is_not_json_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path, "tiny-bad")
    (bundle / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle)


def test_label_count_must_match_the_model(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path, "tiny-bad")
    extra = Label(3, "bone", "Bone", "bone-non-cites", "lookalike")
    write_labels(bundle / "labels.tsv", [*TINY_LABELS, extra])
    digest = sha256_file(bundle / "labels.tsv")
    edit_manifest(bundle, lambda d: d["files"].update({"labels.tsv": digest}))
    with pytest.raises(BundleError, match=r"3 outputs but labels\.tsv has 4 labels"):
        load_bundle(bundle)


def test_unknown_taxon_is_refused_and_nothing_is_left_behind(tmp_path: Path) -> None:
    labels = (
        Label(0, "ivory", "Ivory", "loxodonta-africana", "cites"),
        Label(1, "unicorn", "Unicorn horn", "monoceros-fabulosus", "cites"),
    )
    with pytest.raises(BundleError, match="'monoceros-fabulosus', which is not in the taxonomy"):
        make_tiny_bundle(tmp_path, labels=labels)
    assert list(tmp_path.iterdir()) == []


def test_existing_version_is_not_overwritten(tmp_path: Path) -> None:
    make_tiny_bundle(tmp_path, version="v1")
    with pytest.raises(BundleError, match="already exists"):
        make_tiny_bundle(tmp_path, version="v1")


def test_bad_version_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a valid version"):
        make_tiny_bundle(tmp_path, version="../escape")


def test_list_bundles_reports_broken_ones(tmp_path: Path) -> None:
    make_tiny_bundle(tmp_path, version="a-1")
    make_tiny_bundle(tmp_path, version="b-2", parent_version="a-1", recommended=False)
    make_corrupt_bundle(tmp_path, version="c-3")
    (tmp_path / "not-a-bundle").mkdir()
    quick = {s.version: s for s in list_bundles(tmp_path)}
    assert set(quick) == {"a-1", "b-2", "c-3"}
    assert all(s.ok for s in quick.values())  # manifests alone look fine
    assert quick["b-2"].parent_version == "a-1" and not quick["b-2"].recommended
    verified = {s.version: s for s in list_bundles(tmp_path, verify=True)}
    assert verified["a-1"].ok and not verified["c-3"].ok
    assert "sha256" in (verified["c-3"].error or "")
    assert list_bundles(tmp_path / "absent") == []


def test_labels_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "labels.tsv"
    write_labels(path, TINY_LABELS)
    assert path.read_text().splitlines()[0] == "index\tid\tname\ttaxon_id\tkind"
    assert tuple(read_labels(path)) == TINY_LABELS


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1\tbone\tBone\tbone-non-cites", "expected 5 tab-separated columns"),
        ("x\tbone\tBone\tbone-non-cites\tlookalike", "index 'x' is not an integer"),
        ("2\tbone\tBone\tbone-non-cites\tlookalike", "index must be 1"),
        ("1\tivory\tBone\tbone-non-cites\tlookalike", "duplicate id"),
        ("1\tbone\tBone\tbone-non-cites\tfossil", "kind 'fossil'"),
        ("1\tbone\tBone\t\tcites", "needs a taxon_id"),
        ("1\tBone!\tBone\tbone-non-cites\tlookalike", "id must be lower-case"),
    ],
)
def test_bad_label_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "labels.tsv"
    path.write_text(
        "index\tid\tname\ttaxon_id\tkind\n0\tivory\tIvory\tloxodonta-africana\tcites\n" + line
    )
    with pytest.raises(LabelsError, match=rf"labels\.tsv:3: .*{message}"):
        read_labels(path)


def test_bad_label_header(tmp_path: Path) -> None:
    path = tmp_path / "labels.tsv"
    path.write_text("id\tname\n")
    with pytest.raises(LabelsError, match=r"labels\.tsv:1: header"):
        read_labels(path)


def test_rewrite_bundle_keeps_what_it_is_not_told_to_change(tmp_path: Path) -> None:
    """``rewrite_bundle`` (used by ``cites-vision export`` and ``training.tighten``) keeps the
    output a kNN OOD model scores: written as the default ``features``, the new bundle's OOD
    check would score the fine-tuned features against a bank of reference features."""
    from model.bundle import rewrite_bundle
    from model.decision import Thresholds
    from model.ood import KNN_METHOD

    source = load_bundle(
        make_tiny_bundle(tmp_path / "a", with_ood=True, ood_method=KNN_METHOD, with_int8=True)
    )
    assert source.manifest.ood is not None
    assert source.manifest.ood.features == "reference_features"
    path = rewrite_bundle(source, tmp_path / "b", "tiny-2", thresholds=Thresholds(0.7, 0.6))
    copy = load_bundle(path)
    assert copy.manifest.ood is not None
    assert copy.manifest.ood.features == "reference_features"
    assert copy.manifest.ood.threshold == source.manifest.ood.threshold
    assert copy.manifest.thresholds == Thresholds(0.7, 0.6)
    assert copy.manifest.temperature == source.manifest.temperature
    assert copy.manifest.parent_version == source.version
    for name in source.manifest.models.values():
        if name:
            assert (path / name).read_bytes() == (source.path / name).read_bytes()
