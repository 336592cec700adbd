"""What a test does when a tool it drives (Chromium, PostgreSQL) is missing.

On a developer's machine the test skips and says why. In CI (``CI`` set to ``true`` or ``1``)
it fails instead: a green CI run must mean the browser and database tests really ran.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when the tests run in CI (the ``CI`` environment variable is ``true`` or ``1``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def tool_missing(reason: str) -> NoReturn:
    """Skip the calling test with ``reason``; in CI, fail it instead."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: tests that need this tool must run)", pytrace=False)
    pytest.skip(reason)
