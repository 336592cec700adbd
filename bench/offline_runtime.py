"""The phone's runtime against the service's: ONNX Runtime Web (WASM, in Chromium) vs ONNX
Runtime (Python), INT8 and fp32, on real test-split images the bundle was not trained on.

Both runtimes get the same model inputs (``model.preprocess.preprocess_bytes``), so only the
runtime differs; the decisions come from ``Predictor.predict_outputs`` for both, with the output
the bundle's out-of-domain check scores (``reference_features`` for a kNN bundle). Reports top-1
accuracy against the true labels (with 95% Wilson intervals), agreement of decisions with the
service, and milliseconds per image in the browser. Needs Chromium, Playwright, ``make
web-runtime`` and ``../shared/data``::

    .venv/bin/python -m bench.offline_runtime --images 120 --markdown
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import logging
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from model.predictor import Predictor
from model.preprocess import preprocess_bytes
from service.offline import RUNTIME_DIR, RUNTIME_FILES
from training import data as d

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]

_PAGE = """<!doctype html><script type="module">
import * as ort from "/ort/ort.wasm.min.mjs";
ort.env.wasm.wasmPaths = "/ort/";
ort.env.wasm.numThreads = 1;
const sessions = {};
window.runModel = async (name, b64, size, oodName) => {
  if (!sessions[name]) sessions[name] = await ort.InferenceSession.create("/" + name,
    { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const x = new Float32Array(bytes.buffer);
  const t0 = performance.now();
  const out = await sessions[name].run({ image: new ort.Tensor("float32", x, [1, 3, size, size]) });
  return { ms: performance.now() - t0, logits: Array.from(out.logits.data),
           features: Array.from(out.features.data), ood: Array.from(out[oodName].data) };
};
window.ready = true;
</script>"""


def wilson(successes: int, total: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if total == 0:
        return (0.0, 0.0)
    z = 1.96
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (round(centre - half, 4), round(centre + half, 4))


def _serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.extensions_map = {".mjs": "text/javascript", ".wasm": "application/wasm"}  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_samples(bundle: Path, data_root: Path, limit: int) -> list[tuple[d.Sample, int]]:
    """Test-split images of the bundle's data (its recorded split rule), with label indices."""
    config = json.loads((bundle / "config.json").read_text())["config"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    datasets = [data_root / Path(p).name for p in config["data"]]
    samples = d.load_datasets(datasets, modality=config.get("modality", "camera"))
    splits = d.split_samples(
        samples,
        d.SplitFractions(config["val_fraction"], config["test_fraction"]),
        seed=config["seed"],
    )
    classes: dict[str, str] = manifest["training"]["label_map"]["classes"]
    predictor_labels = [
        line.split("\t")[1] for line in (bundle / "labels.tsv").read_text().splitlines()[1:]
    ]
    chosen = d.subsample(splits["test"], limit)
    return [(s, predictor_labels.index(classes[s.label])) for s in chosen if s.label in classes]


def run(bundle: Path, data_root: Path, limit: int) -> dict[str, Any]:
    """Measure both runtimes on ``limit`` test images; returns the rows as a dict."""
    from playwright.sync_api import sync_playwright

    samples = test_samples(bundle, data_root, limit)
    service = {p: Predictor(bundle, threads=1, precision=p) for p in ("int8", "fp32")}
    config = service["int8"].preprocess
    ood_output = service["int8"].ood_output  # what the OOD check scores
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "index.html").write_text(_PAGE)
        (folder / "ort").mkdir()
        for name in RUNTIME_FILES:
            (folder / "ort" / name).symlink_to(RUNTIME_DIR / name)
        manifest = json.loads((bundle / "manifest.json").read_text())
        for precision, name in manifest["models"].items():
            (folder / f"{precision}.onnx").symlink_to(bundle / name)
        server, url = _serve(folder)
        rows: dict[str, Any] = {}
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
                )
                page = browser.new_page()
                page.goto(url + "/index.html")
                page.wait_for_function("window.ready")
                for precision in ("int8", "fp32"):
                    predictor = service[precision]
                    right_web = right_py = agree = 0
                    times: list[float] = []
                    max_logit_diff = 0.0
                    for sample, truth in samples:
                        array = preprocess_bytes(sample.path.read_bytes(), config)
                        out = page.evaluate(
                            "([n, b, s, o]) => runModel(n, b, s, o)",
                            [
                                f"{precision}.onnx",
                                base64.b64encode(array.astype("<f4").tobytes()).decode(),
                                config.input_size,
                                ood_output,
                            ],
                        )
                        times.append(out["ms"])
                        [web] = predictor.predict_outputs(
                            np.asarray([out["logits"]]),
                            np.asarray([out["features"]]),
                            countries=[None],
                            ood_features=np.asarray([out["ood"]]),
                        )
                        [py] = predictor.predict_arrays(array[None])
                        logits, _f = predictor._run(array[None], ("logits", "features"))
                        max_logit_diff = max(
                            max_logit_diff,
                            float(np.abs(logits[0] - np.asarray(out["logits"])).max()),
                        )
                        right_web += int(int(np.argmax(web.probabilities)) == truth)
                        right_py += int(int(np.argmax(py.probabilities)) == truth)
                        same = (
                            web.decision.kind,
                            web.decision.label_id,
                            web.decision.taxon_id,
                        ) == (
                            py.decision.kind,
                            py.decision.label_id,
                            py.decision.taxon_id,
                        )
                        agree += int(same)
                    n = len(samples)
                    rows[precision] = {
                        "images": n,
                        "browser_top1": round(right_web / n, 4),
                        "browser_top1_ci95": wilson(right_web, n),
                        "service_top1": round(right_py / n, 4),
                        "service_top1_ci95": wilson(right_py, n),
                        "decisions_agree": round(agree / n, 4),
                        "decisions_agree_ci95": wilson(agree, n),
                        "max_logit_difference": round(max_logit_diff, 4),
                        "browser_ms_median": round(float(np.median(times[1:] or times)), 1),
                        "browser_ms_first": round(times[0], 1),
                    }
                    logger.info("%s: %s", precision, rows[precision])
                browser.close()
        finally:
            server.shutdown()
    return {"benchmark": "offline_runtime", "bundle": str(bundle), "rows": rows}


def main() -> None:
    """Command line: print the JSON (and a Markdown table with --markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "weights" / "default")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    result = run(args.bundle, args.data, args.images)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    if args.markdown:
        print(
            "| model | images | browser top-1 (95% CI) | service top-1 (95% CI) "
            "| same decision | max logit diff | browser ms/image |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, r in result["rows"].items():
            print(
                f"| {name} | {r['images']} | {r['browser_top1']} {r['browser_top1_ci95']} | "
                f"{r['service_top1']} {r['service_top1_ci95']} | {r['decisions_agree']} "
                f"{r['decisions_agree_ci95']} | {r['max_logit_difference']} | "
                f"{r['browser_ms_median']} |"
            )


if __name__ == "__main__":
    main()
