"""Predictor over the tiny bundle (known answers), heat maps, and the predict command."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.bundle import BundleError
from model.cli import main
from model.heatmap import HeatmapError, render_heatmap_overlay
from model.predictor import Predictor, PredictorError, softmax
from model.preprocess import ImageError, PreprocessConfig
from model.taxonomy import InvalidCountryError
from tests.factories import (
    BLUE,
    GRAY,
    GREEN,
    MAGENTA,
    RED,
    TINY_OOD_THRESHOLD,
    make_corrupt_bundle,
    solid_array,
    solid_image_bytes,
)


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path) -> Predictor:
    return Predictor(tiny_bundle, threads=1)


def _tiny_logits(color: tuple[int, int, int], scale: float = 4.0) -> list[float]:
    """The tiny model's logits for a test image: ``scale`` times its red, blue, green means."""
    red, green, blue = (float(v) for v in solid_array(color).mean(axis=(1, 2)))
    return [scale * red, scale * blue, scale * green]


def test_colours_give_the_documented_decisions(predictor: Predictor) -> None:
    images = [solid_image_bytes(c) for c in (RED, BLUE, GREEN, MAGENTA)]
    red, blue, green, magenta = predictor.predict_bytes(images, origin_countries=["ZA"] * 4)
    assert not isinstance(red, ImageError)
    assert (red.decision.kind, red.decision.rule) == ("taxon", "label_threshold")
    assert red.decision.taxon_id == "loxodonta-africana"
    assert red.decision.appendix == "II"  # South African population
    assert red.top[0].label.index == 0
    assert red.top[0].probability == pytest.approx(float(softmax(_tiny_logits(RED))[0]), 1e-5)
    assert red.top[0].probability > 0.998
    assert red.ood_score is None  # this bundle has no OOD model
    assert not isinstance(blue, ImageError)
    # Without an OOD model nothing says the image is in the domain: no look-alike all-clear.
    assert (blue.decision.kind, blue.top[0].label.id) == ("uncertain", "ceramic")
    assert not isinstance(green, ImageError)
    assert (green.decision.taxon_id, green.decision.appendix) == ("dalbergia-latifolia", "II")
    assert not isinstance(magenta, ImageError)
    assert (magenta.decision.kind, magenta.decision.rule) == ("uncertain", "below_thresholds")
    assert magenta.probabilities[0] == pytest.approx(magenta.probabilities[1])


def test_lookalike_only_after_the_ood_check_and_named_by_what_it_is_not(
    tiny_bundle_ood: Path,
) -> None:
    checked = Predictor(tiny_bundle_ood, threads=1, precision="fp32")
    blue, gray = checked.predict_bytes(
        [solid_image_bytes(BLUE), solid_image_bytes((128, 128, 128))]
    )
    assert not isinstance(blue, ImageError) and not isinstance(gray, ImageError)
    assert blue.decision.kind == "lookalike"
    assert blue.decision.reason.startswith("not ")
    assert ": looks like Ceramic or porcelain" in blue.decision.reason
    assert blue.decision.reason.endswith("check the documents")
    assert gray.decision.kind == "outside_training_domain"


def test_batch_equals_singles(predictor: Predictor) -> None:
    config = predictor.preprocess
    from model.preprocess import preprocess_bytes

    arrays = np.stack(
        [preprocess_bytes(solid_image_bytes(c), config) for c in (RED, GREEN, BLUE, GRAY)]
    )
    batch = predictor.predict_arrays(arrays, top_k=2)
    for array, together in zip(arrays, batch, strict=True):
        alone = predictor.predict_one(array, top_k=2)
        np.testing.assert_allclose(alone.probabilities, together.probabilities, atol=1e-6)
        assert alone.decision == together.decision
        assert [s.label for s in alone.top] == [s.label for s in together.top]
    assert len(batch[0].top) == 2
    assert predictor.predict_arrays(np.zeros((0, 3, 224, 224), np.float32)) == []


def test_batches_larger_than_max_batch_are_chunked(tiny_bundle: Path) -> None:
    small = Predictor(tiny_bundle, threads=1, max_batch=3)
    arrays = np.random.default_rng(0).normal(size=(7, 3, 224, 224)).astype(np.float32)
    chunked = small.predict_arrays(arrays, with_features=True)
    assert len(chunked) == 7
    expected = arrays.mean(axis=(2, 3))
    got = np.stack([p.features for p in chunked if p.features is not None])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_threads_setting_reaches_the_session(tiny_bundle: Path) -> None:
    two = Predictor(tiny_bundle, threads=2)
    assert two.session_options.intra_op_num_threads == 2
    assert two.session_options.inter_op_num_threads == 1
    assert Predictor(tiny_bundle).session_options.intra_op_num_threads == 0  # ORT's default
    with pytest.raises(PredictorError, match="threads must be at least 1"):
        Predictor(tiny_bundle, threads=0)


def test_batches_run_on_their_own_session_with_the_same_answers(tiny_bundle: Path) -> None:
    """``batch_threads``: inputs of 2+ images go to a second session (of the same file) with
    that many threads; a lone image keeps the first. Both give the same numbers."""
    shared = Predictor(tiny_bundle, threads=2)
    split = Predictor(tiny_bundle, threads=2, batch_threads=1)
    assert split._batch_session is not None
    assert split._batch_session.get_session_options().intra_op_num_threads == 1
    assert Predictor(tiny_bundle, threads=1, batch_threads=1)._batch_session is None
    arrays = np.random.default_rng(1).normal(size=(5, 3, 224, 224)).astype(np.float32)
    for alone, together in zip(
        shared.predict_arrays(arrays), split.predict_arrays(arrays), strict=True
    ):
        np.testing.assert_allclose(alone.probabilities, together.probabilities, atol=1e-6)
    lone = split.predict_arrays(arrays[:1])[0]
    np.testing.assert_allclose(
        lone.probabilities, shared.predict_arrays(arrays[:1])[0].probabilities, atol=1e-6
    )
    with pytest.raises(PredictorError, match="batch_threads must be at least 1"):
        Predictor(tiny_bundle, batch_threads=0)


def test_spinning_is_on_for_batch_use_and_can_be_turned_off(tiny_bundle: Path) -> None:
    key = "session.intra_op.allow_spinning"
    assert Predictor(tiny_bundle).session_options.get_session_config_entry(key) == "1"
    shared = Predictor(tiny_bundle, spin=False)
    assert shared.session_options.get_session_config_entry(key) == "0"


def test_precision_auto_uses_int8_when_present(tiny_bundle_ood: Path) -> None:
    auto = Predictor(tiny_bundle_ood, threads=1)
    fp32 = Predictor(tiny_bundle_ood, threads=1, precision="fp32")
    assert (auto.precision, fp32.precision) == ("int8", "fp32")
    red = solid_image_bytes(RED)
    # The tiny INT8 file is the same graph at half the scale.
    low = auto.predict_bytes([red])[0]
    high = fp32.predict_bytes([red])[0]
    assert not isinstance(low, ImageError) and not isinstance(high, ImageError)
    expected = float(softmax(_tiny_logits(RED, scale=2.0))[0])
    assert low.top[0].probability == pytest.approx(expected, 1e-5)
    assert high.top[0].probability > low.top[0].probability


def test_int8_refused_when_absent(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="no INT8 model"):
        Predictor(tiny_bundle, precision="int8")


def test_ood_image_is_outside_training_domain(tiny_bundle_ood: Path) -> None:
    predictor = Predictor(tiny_bundle_ood, threads=1, precision="fp32")
    red, gray = predictor.predict_bytes([solid_image_bytes(RED), solid_image_bytes(GRAY)])
    assert not isinstance(red, ImageError) and not isinstance(gray, ImageError)
    assert red.decision.kind == "taxon"
    assert red.ood_score is not None and red.ood_score < TINY_OOD_THRESHOLD
    assert (gray.decision.kind, gray.decision.rule) == (
        "outside_training_domain",
        "ood_mahalanobis",
    )
    assert gray.decision.refer_to_expert


def test_bad_image_keeps_its_place(predictor: Predictor) -> None:
    results = predictor.predict_bytes([solid_image_bytes(RED), b"", b"GIF89a broken", b"x"])
    assert not isinstance(results[0], ImageError)
    assert all(isinstance(r, ImageError) for r in results[1:])
    assert getattr(results[1], "code", None) == "empty"


def test_bad_inputs_are_refused(predictor: Predictor) -> None:
    with pytest.raises(PredictorError, match=r"\(N, 3, 224, 224\)"):
        predictor.predict_arrays(np.zeros((1, 3, 100, 100), np.float32))
    with pytest.raises(PredictorError, match="floating point"):
        predictor.predict_arrays(np.zeros((1, 3, 224, 224), np.uint8))
    with pytest.raises(PredictorError, match="one entry per image"):
        predictor.predict_bytes([solid_image_bytes(RED)], origin_countries=["KE", "ZA"])
    with pytest.raises(InvalidCountryError):
        predictor.predict_bytes([solid_image_bytes(RED)], origin_countries=["Kenya"])
    with pytest.raises(PredictorError, match="top_k"):
        predictor.predict_bytes([solid_image_bytes(RED)], top_k=0)


def test_damaged_bundle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="sha256"):
        Predictor(make_corrupt_bundle(tmp_path))


def test_concurrent_calls_agree(predictor: Predictor) -> None:
    images = [solid_image_bytes(c) for c in (RED, GREEN, BLUE, MAGENTA)] * 4
    expected = [p.decision for p in predictor.predict_bytes(images)]  # type: ignore[union-attr]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda data: predictor.predict_bytes([data])[0], images))
    assert [p.decision for p in got] == expected  # type: ignore[union-attr]


def half_and_half() -> bytes:
    """Left half red, right half blue."""
    image = Image.new("RGB", (224, 224), BLUE)
    image.paste(Image.new("RGB", (112, 224), RED), (0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_heatmap_points_at_the_evidence(predictor: Predictor) -> None:
    data = half_and_half()
    ivory = predictor.heatmap(data, label_index=0)
    ceramic = predictor.heatmap(data, label_index=1)
    assert ivory.shape == (7, 7) and ivory.dtype == np.float32
    assert ivory.min() == 0.0 and ivory.max() == 1.0
    assert ivory[:, 0].mean() > 0.9 and ivory[:, -1].mean() < 0.1
    assert ceramic[:, -1].mean() > 0.9 and ceramic[:, 0].mean() < 0.1
    with pytest.raises(PredictorError, match="label_index"):
        predictor.heatmap(data, label_index=3)


def test_overlay_is_a_png_of_the_photo_size(predictor: Predictor) -> None:
    photo = Image.new("RGB", (320, 200), (90, 90, 90))
    cam = predictor.heatmap(half_and_half(), label_index=0)
    png = render_heatmap_overlay(photo, cam, config=PreprocessConfig())
    overlay = Image.open(io.BytesIO(png))
    assert (overlay.format, overlay.size) == ("PNG", (320, 200))
    pixels = np.asarray(overlay.convert("RGB"), dtype=int)
    assert (pixels[100, 2] == 90).all()  # outside the centre crop: untouched
    assert not (pixels[100, 160] == 90).all()  # inside: coloured
    hot, cold = pixels[100, 110], pixels[100, 250]
    assert hot[0] > cold[0]  # the evidence side is warmer (redder)
    with pytest.raises(HeatmapError, match="2-D"):
        render_heatmap_overlay(photo, np.zeros(3))


def write_images(folder: Path) -> None:
    (folder / "sub").mkdir(parents=True)
    (folder / "red.png").write_bytes(solid_image_bytes(RED))
    (folder / "sub" / "blue.jpg").write_bytes(solid_image_bytes(BLUE, fmt="JPEG"))
    (folder / "notes.txt").write_text("not an image, skipped by the folder walk")


def test_predict_command_json_lines(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_images(tmp_path / "in")
    code = main(["predict", "--bundle", str(tiny_bundle), str(tmp_path / "in"), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [Path(r["path"]).name for r in lines] == ["red.png", "blue.jpg"]
    assert lines[0]["decision"]["kind"] == "taxon" and lines[0]["version"] == "tiny-1"
    assert lines[0]["decision"]["appendix"] == "I"  # no origin: the strictest
    assert lines[1]["decision"]["kind"] == "uncertain"  # no OOD model: no all-clear
    assert len(lines[0]["top"]) == 3


def test_predict_command_country_and_bad_image(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_images(tmp_path / "in")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    args = ["predict", "--bundle", str(tiny_bundle), "--json", "--country", "za", "--top-k", "1"]
    code = main([*args, str(tmp_path / "in" / "red.png"), str(broken)])
    red, bad = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert code == 1
    assert red["decision"]["appendix"] == "II" and len(red["top"]) == 1
    assert bad["error"]["code"] in {"corrupt", "unsupported"}


def test_predict_command_user_errors(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "red.png"
    image.write_bytes(solid_image_bytes(RED))
    assert main(["predict", "--bundle", str(tiny_bundle), str(tmp_path / "absent.jpg")]) == 2
    assert "absent.jpg: no such file or folder" in capsys.readouterr().err
    assert main(["predict", "--bundle", str(tmp_path), str(image)]) == 2
    assert "manifest.json: missing" in capsys.readouterr().err
    assert main(["predict", "--bundle", str(tiny_bundle), "--country", "XX", str(image)]) == 2
    assert "ISO 3166-1" in capsys.readouterr().err
