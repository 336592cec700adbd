"""Alternative (b): LitServe serving the bundle's ONNX model with its dynamic batching.

LitServe is the server SpeciesNet uses. One inference worker holds an ONNX Runtime session on
the same ``model.onnx`` (fp32) as the bundle; LitServe groups requests into batches of up to
``max_batch_size`` waiting at most ``batch_timeout``. Images are decoded the usual way (full-size
PIL decode and resize) in ``decode_request``. Like the service, it asks the session for the
output the bundle's out-of-domain check scores besides the logits (for a two-backbone bundle,
``reference_features``: ONNX Runtime would otherwise skip the second backbone, which every
answer of the product needs); it does not score it (the kNN itself is about 0.3 ms).

Run: ``python -m bench.servers.litserve_onnx --bundle weights/default --port 8102``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np

from bench.servers.naive_preprocess import bundle_config, naive_preprocess

logger = logging.getLogger(__name__)


class OnnxClassifierAPI(ls.LitAPI):  # type: ignore[misc]
    """Multipart ``image`` in, top-5 labels out; batched ONNX Runtime inference."""

    def __init__(self, bundle_dir: Path, precision: str, threads: int | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.bundle_dir = bundle_dir
        self.precision = precision
        self.threads = threads

    def setup(self, device: str) -> None:
        """Load the ONNX session and the labels (in the inference worker)."""
        import onnxruntime as ort

        from bench.bench_model import bundle_facts
        from model.labels import read_labels

        facts = bundle_facts(self.bundle_dir)
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(facts[self.precision]), options, providers=["CPUExecutionProvider"]
        )
        self.labels = read_labels(self.bundle_dir / "labels.tsv")
        self.config = bundle_config(self.bundle_dir)
        self.outputs = ["logits"]
        if facts["ood_output"]:
            self.outputs.append(facts["ood_output"])

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        """Read the uploaded file and preprocess it.

        ``request`` stays unannotated on purpose: LitServe reads the annotation to pick the
        request type, and only an empty one gives the raw request (so multipart forms work).
        """
        upload = request["image"]
        data = upload.file.read() if hasattr(upload, "file") else bytes(upload)
        return naive_preprocess(data, self.config)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Stack decoded images into one batch."""
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run the session; returns softmax probabilities."""
        logits = self.session.run(self.outputs, {"image": x})[0]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
        return probabilities

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        """Split a batch of probabilities into rows."""
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        """Top-5 labels as JSON."""
        order = np.argsort(-output)[:5]
        return {
            "top_k": [
                {"label": self.labels[int(i)].id, "probability": float(output[i])} for i in order
            ]
        }


def serve(api: ls.LitAPI, host: str, port: int) -> None:
    """Run ``api`` under LitServe as every LitServe alternative of the benchmark does: one CPU
    worker, its dynamic batching, a 60 s request timeout."""
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(
        host=host,
        port=port,
        generate_client_file=False,
        log_level="warning",
        num_api_servers=1,
    )


def main(argv: list[str] | None = None) -> int:
    """Serve the LitServe baseline on loopback."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8102)
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    api = OnnxClassifierAPI(
        args.bundle.resolve(),
        args.precision,
        args.threads,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
    )
    serve(api, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
