"""The core and the service run without torch: importing them never loads torch or timm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, json, pkgutil, sys
import model
names = sorted(m.name for m in pkgutil.walk_packages(model.__path__, "model."))
for name in names:
    importlib.import_module(name)
import service.app
heavy = sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)
print(json.dumps({"modules": names, "heavy": heavy}))
"""


def test_model_and_service_import_without_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert "model.predictor" in found["modules"], "every model.* module was imported"
    assert found["heavy"] == [], f"importing model.* and service.app loaded {found['heavy']}"
