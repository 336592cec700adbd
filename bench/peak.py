"""What the machine can do: measured fp32 matrix-multiply peak, and what the model costs.

The peak is the best of a few large single-precision GEMMs (numpy's BLAS, ONNX Runtime's MLAS and
torch), using every CPU this process may run on; on this machine MLAS (AVX-512) is the fastest by
far, so numpy or torch alone would understate the peak. The model cost is counted by
``torch.utils.flop_counter`` on one 224x224 image (convolutions and matrix products; 2 FLOPs
per multiply-add).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _gemm_gflops(multiply: Any, a: Any, b: Any, n: int, repeats: int) -> float:
    multiply(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        multiply(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def numpy_sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GEMM rate of numpy's BLAS on ``n x n`` matrices, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return _gemm_gflops(np.matmul, a, b, n, repeats)


def torch_sgemm_gflops(n: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """Best fp32 GEMM rate of torch (oneDNN/MKL) on ``n x n`` matrices, in GFLOP/s."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator)
    b = torch.randn(n, n, generator=generator)
    with torch.inference_mode():
        return _gemm_gflops(torch.mm, a, b, n, repeats)


def onnxruntime_sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GEMM rate of ONNX Runtime's own kernels (MLAS) on ``n x n``, in GFLOP/s.

    A one-node ``MatMul`` graph built in memory; the kernels the model's convolutions use.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)

    def multiply(x: Any, y: Any) -> Any:
        return session.run(None, {"a": x, "b": y})

    return _gemm_gflops(multiply, a, b, n, repeats)


def fp32_peak(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Measured fp32 matrix-multiply peak: each library and the best of them (GFLOP/s)."""
    result = {"numpy_gflops": numpy_sgemm_gflops(n, repeats)}
    try:
        result["onnxruntime_gflops"] = onnxruntime_sgemm_gflops(n, repeats)
    except ImportError:
        logger.info("onnx not installed: no ONNX Runtime GEMM")
    try:
        result["torch_gflops"] = torch_sgemm_gflops(n, repeats)
    except ImportError:
        logger.info("torch not installed: peak from numpy only")
    result["peak_gflops"] = max(result.values())
    return result


def model_gflops(num_classes: int | None = None, size: int = 224) -> float:
    """FLOPs of one forward pass of the bundle's network on one ``size`` image, in GFLOP.

    Counts the network as exported (:class:`training.backbone.ExportWrapper`: logits, pooled
    features and the in-graph class activation maps).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from training.backbone import ExportWrapper, create_model

    wrapper = ExportWrapper(create_model(num_classes, pretrained=False)).eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        wrapper(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops()) / 1e9
