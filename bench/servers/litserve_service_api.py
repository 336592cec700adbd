"""LitServe running the service's own inference stage (:class:`service.inference.PredictorAPI`).

The service's inference stage has the shape of a LitServe ``LitAPI``; this server runs that
same class under LitServe: ``decode_request`` turns the multipart upload into the stage's
request with the core's preprocessing (:func:`model.preprocess.preprocess_bytes`, reduced-scale
JPEG decoding included), and ``batch`` / ``predict`` / ``unbatch`` are the service's own, over
the bundle's predictor (the INT8 file when the bundle has one, as the service serves it). It
answers the decision and the top labels; it stores nothing and records nothing. Compared with
the full service, it separates the cost of the server and of durability from the inference.

Run: ``python -m bench.servers.litserve_service_api --bundle weights/default --port 8104``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import litserve as ls

from bench.servers.litserve_onnx import serve
from model.predictor import Prediction, Predictor
from model.preprocess import preprocess_bytes
from service.inference import InferenceItem, PredictorAPI

logger = logging.getLogger(__name__)


class ServiceInferenceAPI(PredictorAPI, ls.LitAPI):  # type: ignore[misc]
    """:class:`PredictorAPI` with an HTTP edge: multipart ``image`` in, decision JSON out."""

    def __init__(self, bundle_dir: Path, threads: int | None, **kwargs: Any) -> None:
        ls.LitAPI.__init__(self, **kwargs)
        self.bundle_dir = bundle_dir
        self.threads = threads
        self.predictor: Predictor | None = None

    def setup(self, device: str) -> None:
        """Load the bundle's predictor (in the inference worker)."""
        self.predictor = Predictor(self.bundle_dir, threads=self.threads)
        self.predictor.warmup()
        super().setup(device)

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        """The upload, preprocessed by the core, as the inference stage's request.

        ``request`` stays unannotated on purpose: LitServe reads the annotation to pick the
        request type, and only an empty one gives the raw form (so multipart uploads work).
        """
        if self.predictor is None:
            raise RuntimeError("setup() has not run")
        upload = request["image"]
        data = upload.file.read() if hasattr(upload, "file") else bytes(upload)
        array = preprocess_bytes(data, self.predictor.preprocess)
        return super().decode_request(InferenceItem(self.predictor, array, None, 5))

    def encode_response(self, output: Prediction) -> dict[str, Any]:  # type: ignore[override]
        """The decision and the top labels as JSON."""
        decision = super().encode_response(output).decision
        return {
            "decision": {"kind": decision.kind, "label": decision.label_id},
            "top_k": [
                {"label": score.label.id, "probability": float(score.probability)}
                for score in output.top[:5]
            ],
        }


def main(argv: list[str] | None = None) -> int:
    """Serve the service's inference stage under LitServe on loopback."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8104)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    api = ServiceInferenceAPI(
        args.bundle.resolve(),
        args.threads,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
    )
    serve(api, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
