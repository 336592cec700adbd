"""``bench.offline_runtime`` on two real test-split photos: both runtimes answer, with the output
the bundle's out-of-domain check scores (no timings asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.offline import web_runtime
from tests.browser_helpers import default_bundle, require_browser
from tests.tools import tool_missing

pytestmark = [pytest.mark.browser, pytest.mark.shared_data, pytest.mark.timeout(300)]


def test_both_runtimes_answer_the_same_photos(shared_data: Path) -> None:
    require_browser()
    if not web_runtime().available:
        tool_missing("ONNX Runtime Web is not installed: run `make web-runtime` (npm ci)")
    bundle = default_bundle()
    if bundle is None:
        pytest.skip("weights/default has no bundle")
    from bench.offline_runtime import run

    result = run(bundle, shared_data, 2)
    for precision in ("int8", "fp32"):
        row = result["rows"][precision]
        assert row["images"] == 2
        assert 0.0 <= row["decisions_agree"] <= 1.0 and row["browser_ms_median"] > 0
    assert result["rows"]["fp32"]["max_logit_difference"] < 1e-3  # WASM fp32 = the service's
