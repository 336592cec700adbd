"""The retraining loop on real images: feedback export -> activated bundle, timed step by step.

Set-up (not timed): a base bundle is trained on ``../shared/data`` (met-ivory and
wood-trade-groups) *without* ``--new`` met-ivory images held out per class; a real service
(``cites-vision serve``, SQLite) serves it; an officer key identifies each held-out image over
HTTP and confirms it when the answer is right or corrects it to its true label when not.

Timed, as a trainer runs them:

1. ``cites-vision feedback export`` (the archive of the officers' feedback);
2. ``cites-vision retrain --base ... --data FEEDBACK.tar.gz --activate URL --key KEY``
   (``--head-only`` by default; ``--mode`` picks another), which warm-starts, replays, gates,
   writes the bundle and activates it;
3. until the service answers with the new version (``/readyz``).

Run: ``python -m bench.retrain_loop [--new 200] [--mode head|last|full] [--out bench/results]``.
The JSON result lands in ``--out``; docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import machine_info, shared_data_dir, write_json

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
LABEL_MAP = REPO / "training" / "label_maps" / "default.tsv"
TRUE_LABEL = {"ivory": "ivory", "non_ivory": "ceramic"}


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``cites-vision ARGS`` (this interpreter); returns (seconds, stdout)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", "from model.cli import main; raise SystemExit(main())", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cites-vision {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return time.monotonic() - started, done.stdout


def split_met_ivory(data: Path, new_per_class: int, work: Path) -> tuple[Path, list[Path]]:
    """A manifest of met-ivory minus ``new_per_class`` images per class (chosen by sha256 of the
    file name), and the held-out images (the officers' new photos)."""
    kept: list[tuple[Path, str]] = []
    held: list[Path] = []
    for folder in sorted(p for p in (data / "met-ivory").iterdir() if p.is_dir()):
        files = sorted(
            (p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")),
            key=lambda p: hashlib.sha256(p.name.encode()).hexdigest(),
        )
        held += files[:new_per_class]
        kept += [(p, folder.name) for p in files[new_per_class:]]
    manifest = work / "base-met-ivory.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "label", "modality", "source", "case_id"))
        for path, label in kept:
            writer.writerow((str(path), label, "camera", "met-ivory", ""))
    return manifest, held


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    """Until ``/readyz`` answers 200; fails at once when the server exits (port taken...)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"cites-vision serve exited with {server.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def run(
    new_per_class: int, mode: str, out: Path, port: int, work: Path | None = None
) -> dict[str, Any]:
    """Set up, run the timed loop, and return the result (also written to ``out``).

    ``work`` reuses the set-up of an earlier run (its base bundle) when it holds one.
    """
    data = shared_data_dir()
    work = work or Path(tempfile.mkdtemp(prefix="bench-retrain-"))
    weights = work / "weights"
    manifest, held = split_met_ivory(data, new_per_class, work)
    base_s = None
    if not (weights / "base" / "manifest.json").is_file():
        base_args = ["train", "--data", str(manifest), "--data", str(data / "wood-trade-groups")]
        base_args += ["--label-map", str(LABEL_MAP), "--out", str(weights), "--version", "base"]
        base_args += ["--mode", "head"]
        logger.info("set-up: training the base bundle (head mode) ...")
        base_s, _ = _cli(*base_args)
    for stale in ("retrained",):
        if (weights / stale).exists():
            import shutil

            shutil.rmtree(weights / stale)

    env = {k: v for k, v in os.environ.items() if not k.startswith("CITES_")}
    env.update({"CITES_ONNX_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    data_dir = work / f"service-{int(time.time())}"
    url = f"http://127.0.0.1:{port}"
    log = (work / "service.log").open("wb")
    serve = [sys.executable, "-c", "from model.cli import main; raise SystemExit(main())"]
    serve += ["serve", "--port", str(port), "--bundle", str(weights / "base")]
    serve += ["--data-dir", str(data_dir), "--weights-dir", str(weights)]
    server = subprocess.Popen(serve, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, server)
        _, officer_out = _cli(
            "keys", "create", "--role", "officer", "--name", "bench-officer",
            "--data-dir", str(data_dir), env=env,
        )  # fmt: skip
        _, admin_out = _cli(
            "keys", "create", "--role", "admin", "--name", "bench-trainer",
            "--data-dir", str(data_dir), env=env,
        )  # fmt: skip
        officer = officer_out.strip().splitlines()[-1]
        admin = admin_out.strip().splitlines()[-1]
        client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {officer}"}, timeout=60
        )
        confirmed = corrected = 0
        for path in held:
            made = client.post(
                "/v1/identifications", files={"image": (path.name, path.read_bytes())}
            )
            made.raise_for_status()
            body = made.json()
            truth = TRUE_LABEL[path.parent.name]
            top = body["top_k"]  # empty when the image checks refused the photo
            if top and top[0]["label"] == truth:
                feedback = {"verdict": "confirm"}
                confirmed += 1
            else:
                feedback = {"verdict": "correct", "label": truth}
                corrected += 1
            client.post(
                f"/v1/identifications/{body['id']}/feedback", json=feedback
            ).raise_for_status()
        logger.info("feedback: %d confirmed, %d corrected", confirmed, corrected)

        archive = work / "feedback.tar.gz"
        export_s, export_out = _cli(
            "feedback", "export", "--data-dir", str(data_dir), "--out", str(archive), env=env
        )
        retrain = ["retrain", "--base", str(weights / "base"), "--data", str(archive)]
        retrain += ["--out", str(weights), "--version", "retrained", "--activate", url]
        retrain += ["--key", admin, "--json"]
        retrain += ["--head-only"] if mode == "head" else ["--mode", mode]
        started = time.monotonic()
        retrain_s, retrain_out = _cli(*retrain, env=env)
        while httpx.get(url + "/readyz", trust_env=False).json()["model_version"] != "retrained":
            time.sleep(0.05)
        served_s = time.monotonic() - started
        report = json.loads(retrain_out[: retrain_out.rindex("}") + 1])
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    gate = report["gate"]["comparisons"]
    result = {
        "benchmark": "retrain_loop",
        "new_images": len(held),
        "confirmed": confirmed,
        "corrected": corrected,
        "mode": mode,
        "setup_base_train_s": None if base_s is None else round(base_s, 1),
        "export_s": round(export_s, 1),
        "retrain_and_activate_s": round(retrain_s, 1),
        "export_to_served_s": round(export_s + served_s, 1),
        "export_summary": export_out.strip(),
        "recommended": report["recommended"],
        "gate_a": gate["a_base_test_set"],
        "gate_b": gate["b_new_holdout"],
        "machine": machine_info(),
    }
    write_json(out / f"retrain_loop-{mode}.json", result)
    return result


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new", type=int, default=200, help="new images in all (half per class)")
    parser.add_argument("--mode", choices=("head", "last", "full"), default="head")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--work", type=Path, help="reuse an earlier run's folder (its base)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(args.new // 2, args.mode, args.out, args.port, args.work)
    sys.stdout.write(
        json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
