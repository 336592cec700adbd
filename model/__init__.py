"""CITES Vision shared core: taxonomy, labels, preprocessing, bundle format and ONNX predictor.

Nothing in this package imports ``service`` or ``training``, torch or timm: it needs numpy,
Pillow and onnxruntime only. Backbone construction (torch, timm) lives in ``training.backbone``.
"""

__version__ = "0.1.0"
