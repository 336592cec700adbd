"""Smoke tests of the benchmark scripts at tiny sizes, so they do not rot (no timings asserted)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from bench import loadgen, report
from bench.common import percentile
from bench.peak import numpy_sgemm_gflops

REPO_ROOT = Path(__file__).resolve().parents[2]


class _Recorder(BaseHTTPRequestHandler):
    """Answers every POST with 201 and remembers a hash of each body (keep-alive HTTP/1.1)."""

    protocol_version = "HTTP/1.1"
    bodies: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(hashlib.sha256(body).hexdigest())
        status = 201 if b"image/jpeg" in body else 422
        files = body.count(b"filename=")
        answer = json.dumps(
            {"results": [{"identification": {}}] * (files - 1) + [{"error": {"status": 503}}]}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def recorder() -> Iterator[str]:
    _Recorder.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/identifications"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
        (folder / f"img{i}.jpg").write_bytes(buf.getvalue())
    return folder


def _run_loadgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.loadgen", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_loadgen_process_counts_and_sends_unique_jpegs(recorder: str, images: Path) -> None:
    done = _run_loadgen(
        "--url", recorder, "--images", str(images), "--concurrency", "4",
        "--requests", "20", "--duration", "10", "--warmup", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["requests"] == 20
    assert result["ok"] == 20 and result["errors"] == 0
    assert result["statuses"] == {"201": 20}
    assert result["images_per_s"] > 0 and result["p50_ms"] <= result["p99_ms"]
    assert len(_Recorder.bodies) == 21  # the warm-up request too
    assert len(set(_Recorder.bodies)) == 21  # every upload differs


def test_loadgen_batch_payload_and_same_bytes(recorder: str, images: Path) -> None:
    done = _run_loadgen(
        "--url", recorder, "--images", str(images), "--field", "images", "--per-request", "2",
        "--requests", "4", "--duration", "10", "--warmup", "0", "--same-bytes", "--batch-answers",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] == 4 and result["images_ok"] == 4  # one of each two failed
    assert result["item_errors"] == {"503": 4}
    assert len(set(_Recorder.bodies)) == 1  # one two-image payload, sent unchanged


def test_loadgen_refuses_non_loopback_targets(images: Path) -> None:
    done = _run_loadgen("--url", "http://192.0.2.1:8000/x", "--images", str(images))
    assert done.returncode == 2
    assert "loopback" in done.stderr
    with pytest.raises(loadgen.LoadgenError):
        loadgen.check_loopback("https://127.0.0.1/x")
    assert loadgen.check_loopback("http://[::1]:81/a?b=1") == ("::1", 81, "/a?b=1")


def test_unique_jpeg_stays_decodable(images: Path) -> None:
    data = (images / "img0.jpg").read_bytes()
    tagged = loadgen.unique_jpeg(data, b"tag-1")
    assert tagged != data and loadgen.unique_jpeg(data, b"tag-2") != tagged
    assert Image.open(io.BytesIO(tagged)).size == (48, 32)
    assert loadgen.unique_jpeg(b"\x89PNG....", b"t") == b"\x89PNG...."


def test_percentile_and_peak() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0], 100) == 2.0
    assert numpy_sgemm_gflops(n=64, repeats=1) > 0


def test_report_renders_goals_and_keeps_hand_written_sections() -> None:
    results = {
        "model": None,
        "compare": {
            "concurrency": 32,
            "servers": {
                name: {
                    "images_per_s": ips, "images_per_s_per_round": [ips], "p50_ms_load": 10.0,
                    "p99_ms_load": 20.0, "errors": 0, "statuses": {"201": 5, "503": 1},
                    "phone_p50_ms": p50, "phone_p50_ms_per_round": [p50], "phone_errors": 0,
                    "peak_rss_mib": 300.0,
                }
                for name, ips, p50 in (
                    ("cites_vision", 100.0, 30.0), ("litserve", 50.0, 150.0),
                    ("plain_pytorch", 25.0, 160.0),
                )
            },
            "ratios": {
                "litserve": {"throughput": 2.0, "phone_latency_speedup": 5.0},
                "plain_pytorch": {"throughput": 4.0, "phone_latency_speedup": 5.3},
            },
        },
    }  # fmt: skip
    uploads = {"clients": 64, "peak_sampled_pss_mib": 580.0, "goal_mib": 700.0}
    rows = {row["goal"]: row for row in report.goals(results, uploads)}
    upload_goal = next(g for g in rows if "concurrent 14 MB uploads" in g)
    assert rows[upload_goal]["met"] is True and rows[upload_goal]["achieved"] == "580 MiB"
    assert next(r for r in report.goals(results) if "14 MB" in r["goal"])["met"] is None
    assert rows["service images/s at concurrency 32 vs LitServe + ONNX Runtime fp32"]["met"]
    assert (
        rows["service images/s at concurrency 32 vs plain FastAPI + PyTorch eager"]["met"] is False
    )
    assert rows["12 MP phone JPEG end to end, one client, p50"]["met"] is True
    assert rows["ONNX Runtime INT8 throughput vs PyTorch eager, batch 32"]["met"] is None
    existing = (
        "# x\n\n## Load, 60 s at concurrency 64\n\nkept text\n\n## Other\n\ndropped\n\n"
        "## Test-time augmentation\n\ntta figures\n"
    )
    page = report.render(results, existing)
    assert "kept text" in page and "tta figures" in page and "dropped" not in page
    assert "## Analysis of the misses" in page
    assert "**missed**" in page and "**met**" in page


@pytest.mark.train
@pytest.mark.slow  # spawns one process per backend, each importing torch: ~10-30 s
def test_model_bench_on_the_tiny_bundle(tiny_bundle: Path) -> None:
    pytest.importorskip("torch")
    from bench import bench_model

    result = bench_model.run(
        tiny_bundle,
        rounds=1,
        seconds=0.01,
        batches=(1, 2),
        with_channels_last=False,
        peak_n=256,
        quantise_missing_int8=False,
    )
    assert result["int8_source"] is None
    assert set(result["backends"]) == {"pytorch_eager", "onnxruntime_fp32"}
    assert result["backends"]["onnxruntime_fp32"]["2"]["images_per_s"] > 0
    assert 0.6 < result["gflop_per_image"] < 0.9  # EfficientNet-Lite0 at 224: about 0.77
    assert result["ratios"]["onnxruntime_fp32"]["1"] > 0


def test_backbone_timing_runs_a_bundle_file(tiny_bundle: Path) -> None:
    """``bench.backbones.time_file`` times an ONNX file with the service's session options and
    gives a positive per-image figure for a batch."""
    from bench.backbones import time_file

    per_image = time_file(tiny_bundle / "model.onnx", 224, batch=2, threads=1, seconds=0.01)
    assert 0.0 < per_image < 10_000.0


def test_tta_fuses_views_of_each_photo(tiny_bundle: Path) -> None:
    """``bench.tta``: the mirror view is the mirror image, and the fused answer of a photo is
    the mean of its views' calibrated probabilities, one decision per photo."""
    from bench.tta import answer, views
    from model.predictor import Predictor
    from model.preprocess import image_to_array

    rng = np.random.default_rng(3)
    photos = [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(3)]
    mirrored = views(photos[0], "flip")
    assert len(mirrored) == 2 and len(views(photos[0], "flip+zoom")) == 3
    assert np.array_equal(np.asarray(mirrored[1]), np.asarray(photos[0])[:, ::-1])

    predictor = Predictor(tiny_bundle, threads=1)
    single, single_kinds, _ = answer(predictor, photos, "single")
    fused, kinds, seconds = answer(predictor, photos, "flip")
    assert fused.shape == single.shape == (3, len(predictor.labels)) and len(kinds) == 3
    assert seconds > 0 and len(single_kinds) == 3
    np.testing.assert_allclose(fused.sum(axis=1), 1.0, atol=1e-5)
    flipped = predictor.predict_arrays(
        np.stack([image_to_array(v, predictor.preprocess) for v in mirrored])
    )
    expected = (flipped[0].probabilities + flipped[1].probabilities) / 2
    np.testing.assert_allclose(fused[0], expected, atol=1e-5)
    np.testing.assert_allclose(single[0], flipped[0].probabilities, atol=1e-5)
