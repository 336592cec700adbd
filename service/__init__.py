"""CITES Vision HTTP service (FastAPI + ONNX Runtime). Never imports torch."""
