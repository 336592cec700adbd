"""CITES Vision shared core: taxonomy, labels, preprocessing, bundle format and ONNX predictor.

Nothing in this package imports ``service`` or ``training``; torch is imported only inside
``model.backbone`` (used by training and by ``cites-vision backbone check``).
"""

__version__ = "0.1.0"
