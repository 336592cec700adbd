"""Alternative (a): a plain FastAPI endpoint running the model in PyTorch eager, per request.

What most teams write first: one ``def`` route (FastAPI runs it in its thread pool), full-size
PIL decode and resize, one forward pass per request under ``torch.no_grad``, softmax, top-5 as
JSON. The network is the bundle's architecture (:func:`training.backbone.create_model` with the
bundle's class count, wrapped like the ONNX export) so it costs what the bundle costs: with a
second, frozen backbone for bundles whose out-of-domain check scores ``reference_features``.

Run: ``python -m bench.servers.plain_torch --bundle weights/default --port 8101``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, UploadFile

from bench.servers.naive_preprocess import bundle_config, naive_preprocess

logger = logging.getLogger(__name__)


def create_app(bundle_dir: Path, threads: int | None = None) -> FastAPI:
    """Build the FastAPI app: ``POST /predict`` with a multipart ``image`` file."""
    import torch

    from bench.bench_model import bundle_facts
    from model.labels import read_labels
    from training.backbone import ExportWrapper, PooledFeatures, create_model

    if threads:
        torch.set_num_threads(threads)
    facts = bundle_facts(bundle_dir)
    labels = read_labels(bundle_dir / "labels.tsv")
    config = bundle_config(bundle_dir)
    model = ExportWrapper(create_model(facts["num_classes"], pretrained=False)).eval()
    reference = (
        PooledFeatures(create_model(facts["num_classes"], pretrained=False)).eval()
        if facts["ood_output"] == "reference_features"
        else None
    )
    app = FastAPI(title="plain PyTorch baseline")

    @app.post("/predict")
    def predict(image: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        data = image.file.read()
        tensor = torch.from_numpy(naive_preprocess(data, config)).unsqueeze(0)
        with torch.no_grad():
            logits, _features, _cam = model(tensor)
            if reference is not None:
                reference(tensor)  # the out-of-domain check's features
        probs = torch.softmax(logits[0], dim=0)
        top = torch.topk(probs, k=min(5, probs.numel()))
        return {
            "top_k": [
                {"label": labels[i].id, "probability": float(p)}
                for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            ]
        }

    return app


def main(argv: list[str] | None = None) -> int:
    """Serve the baseline on loopback with uvicorn."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(args.bundle, args.threads),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
