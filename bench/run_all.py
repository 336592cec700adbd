"""Run every benchmark and regenerate docs/benchmarks.md (``make bench``; < 20 min).

Stages (``--only`` picks some; the others keep their previous results from
``docs/benchmarks/results.json``):

* ``model``: PyTorch eager vs ONNX Runtime fp32 vs INT8, batch 1/8/32, fp32 peak, FLOPs;
* ``preprocess``: ``bench/bench_preprocess.py`` (full vs reduced-scale decode);
* ``service``: the service under load, both endpoints, micro-batching on/off, raw predictor;
* ``compare``: ours vs plain FastAPI + PyTorch and vs LitServe, alternating rounds;
* ``training``: images/s of each fine-tuning mode, time to rebuild the default bundle;
* ``profile``: py-spy samples of the service under load and on one 12 MP image;
* ``rebuild`` (only when asked): time ``training/build_default.sh`` for real; otherwise the
  duration the default bundle's manifest records is reported.

``--quick`` shrinks every stage to a smoke run (a minute or two; numbers meaningless).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import CACHE_DIR, DEFAULT_BUNDLE, RESULTS_FILE, machine_info, write_json

logger = logging.getLogger("bench")

STAGES = ("model", "preprocess", "service", "compare", "training", "profile")
EXTRA_STAGES = ("rebuild",)
"""Not part of ``make bench`` (it alone takes 10-25 min): ``--only rebuild``."""


class Plan:
    """Sizes of every stage: full run or ``--quick`` smoke run."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.model_rounds = 1 if quick else 3
        self.model_seconds = 0.2 if quick else 1.5
        self.preprocess_runs = 2 if quick else 15
        self.load_images = 32 if quick else 256
        self.duration_s = 2.0 if quick else 8.0
        self.concurrencies = (1, 8) if quick else (1, 8, 32, 64)
        self.compare_rounds = 1 if quick else 3
        self.phone_requests = 3 if quick else 12
        self.training_steps = 1 if quick else 2
        self.training_rounds = 1 if quick else 2
        self.profile_seconds = 3.0 if quick else 10.0


BENCH_MODULES = ("litserve", "psutil", "matplotlib", "torch", "timm", "fastapi", "uvicorn")


def missing_dependencies() -> list[str]:
    """Bench-only packages (the ``bench`` extra and friends) that are not importable here."""
    import importlib.util

    from bench.profile import py_spy

    missing = [name for name in BENCH_MODULES if importlib.util.find_spec(name) is None]
    if py_spy() is None:
        missing.append("py-spy")
    return missing


def resolve_bundle(flag: Path | None) -> tuple[Path, bool]:
    """The bundle to measure and whether it is the development stand-in."""
    if flag is not None:
        return flag, False
    if (DEFAULT_BUNDLE / "manifest.json").is_file():
        return DEFAULT_BUNDLE.resolve(), False
    from bench.devbundle import make_dev_bundle

    logger.warning("%s is missing: measuring the stand-in bundle", DEFAULT_BUNDLE)
    return make_dev_bundle(), True


def stage_model(plan: Plan, bundle: Path, work: Path) -> dict[str, Any]:
    """Model backends."""
    from bench import bench_model

    return bench_model.run(bundle, rounds=plan.model_rounds, seconds=plan.model_seconds)


def stage_preprocess(plan: Plan, bundle: Path, work: Path) -> dict[str, Any]:
    """Preprocessing, by the preprocessing engineer's script."""
    from bench import bench_preprocess

    return bench_preprocess.run(plan.preprocess_runs)


def _load_dir(plan: Plan, work: Path) -> tuple[Path, list[Any]]:
    from bench.images import load_set, write_load_set

    images = load_set(plan.load_images)
    return write_load_set(images, work / "load"), images


def _phone_dir(work: Path) -> Path:
    from bench.images import phone_jpeg, write_load_set

    return write_load_set([phone_jpeg()], work / "phone")


def stage_service(plan: Plan, bundle: Path, work: Path) -> dict[str, Any]:
    """The service under load, plus the raw predictor on the same images."""
    from bench import service_load

    load_dir, images = _load_dir(plan, work)
    result = service_load.run(
        bundle,
        load_dir,
        work / "logs",
        concurrencies=plan.concurrencies,
        duration_s=plan.duration_s,
    )
    result["images"] = len(images)
    result["batch_images"] = service_load.BATCH_IMAGES_PER_REQUEST
    result["raw_predictor"] = service_load.raw_predictor_throughput(
        bundle, images, seconds=plan.duration_s
    )
    return result


def stage_compare(plan: Plan, bundle: Path, work: Path) -> dict[str, Any]:
    """Ours vs the alternatives, alternating rounds."""
    from bench import compare

    load_dir, _ = _load_dir(plan, work)
    return compare.run(
        bundle,
        load_dir,
        _phone_dir(work),
        work / "logs",
        rounds=plan.compare_rounds,
        duration_s=plan.duration_s,
        phone_requests=plan.phone_requests,
    )


def stage_training(plan: Plan, bundle: Path, work: Path) -> dict[str, Any]:
    """Fine-tuning modes and the recorded rebuild time."""
    from bench import bench_training

    return {
        "modes": bench_training.mode_throughput(
            steps=plan.training_steps, rounds=plan.training_rounds
        ),
        "rebuild": bench_training.recorded_rebuild(bundle),
    }


def stage_profile(plan: Plan, bundle: Path, work: Path) -> dict[str, Any]:
    """py-spy profiles of our service: under load at 32 clients, and one 12 MP image at a time."""
    from bench import profile, service_load

    load_dir, _ = _load_dir(plan, work)
    phone_dir = _phone_dir(work)
    results: dict[str, Any] = {}
    with service_load.our_service(bundle, work / "logs") as server:
        url = server.base_url + service_load.SINGLE_PATH
        for name, folder, concurrency in (
            ("service, 32 clients, load set", load_dir, 32),
            ("service, 1 client, 12 MP JPEG", phone_dir, 1),
        ):
            service_load.run_loadgen(url, folder, concurrency=concurrency, requests=4, duration_s=5)
            raw = work / "profiles" / (name.replace(" ", "_").replace(",", "") + ".txt")
            with profile.sample(server.process.pid, raw, seconds=plan.profile_seconds):
                service_load.run_loadgen(
                    url,
                    folder,
                    concurrency=concurrency,
                    requests=100000,
                    duration_s=plan.profile_seconds,
                    warmup=0,
                )
            results[name] = profile.summarise(raw)
    return results


def stage_rebuild(plan: Plan, bundle: Path, work: Path) -> dict[str, Any]:
    """Rebuild the default bundle for real (into a scratch folder) and time it."""
    from bench import bench_training

    return bench_training.measure_rebuild(work / "weights")


RUNNERS: dict[str, Callable[[Plan, Path, Path], dict[str, Any]]] = {
    "model": stage_model,
    "preprocess": stage_preprocess,
    "service": stage_service,
    "compare": stage_compare,
    "training": stage_training,
    "profile": stage_profile,
    "rebuild": stage_rebuild,
}
RESULT_KEYS = {"profile": "profiles"}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen stages, merge with stored results, write results and the page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", action="append", choices=STAGES + EXTRA_STAGES, help="stage(s)")
    parser.add_argument("--skip", action="append", choices=STAGES, default=[], help="skip stage")
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (not for the doc)")
    parser.add_argument("--bundle", type=Path, default=None, help="default: weights/default")
    parser.add_argument("--results", type=Path, default=None, help=f"default: {RESULTS_FILE}")
    parser.add_argument("--no-report", action="store_true", help="do not rewrite the docs page")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    missing = missing_dependencies()
    if missing:
        sys.stderr.write(
            f"error: the benchmarks need {', '.join(missing)}: "
            "pip install -e '.[serve,train,bench]' (or pip install -r bench/requirements.txt)\n"
        )
        return 2
    plan = Plan(args.quick)
    results_file = args.results or (
        CACHE_DIR / "results-quick.json" if args.quick else RESULTS_FILE
    )
    stages = [s for s in (args.only or STAGES) if s not in args.skip]
    bundle, stand_in = resolve_bundle(args.bundle)
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if not (bundle / "manifest.json").is_file():
        sys.stderr.write(f"error: {bundle} is not a bundle (no manifest.json); pass --bundle DIR\n")
        return 2
    manifest = json.loads((bundle / "manifest.json").read_text())
    results["machine"] = machine_info()
    results["bundle"] = {
        "path": str(
            bundle.relative_to(Path.cwd()) if bundle.is_relative_to(Path.cwd()) else bundle
        ),
        "version": manifest.get("version"),
        "stand_in": stand_in,
    }
    timings: dict[str, float] = results.setdefault("stage_seconds", {})
    started = time.perf_counter()
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cites-bench-") as scratch:
        work = Path(scratch)
        for stage in stages:
            logger.info("stage %s ...", stage)
            t0 = time.perf_counter()
            try:
                value = RUNNERS[stage](plan, bundle, work)
                if stage == "rebuild":
                    results.setdefault("training", {}).setdefault("rebuild", {}).update(value)
                else:
                    previous = (results.get("training") or {}).get("rebuild") or {}
                    results[RESULT_KEYS.get(stage, stage)] = value
                    if stage == "training" and previous.get("measured_seconds"):
                        value["rebuild"].update(
                            {k: previous[k] for k in ("measured_seconds",) if k in previous}
                        )
            except Exception:  # one failed stage must not lose the others' results
                logger.exception("stage %s failed", stage)
                failed.append(stage)
            timings[stage] = time.perf_counter() - t0
            logger.info("stage %s done in %.0f s", stage, timings[stage])
            write_json(results_file, results)
    results["total_seconds"] = sum(timings.get(s, 0.0) for s in STAGES)
    results["last_run_seconds"] = time.perf_counter() - started
    write_json(results_file, results)
    logger.info("results in %s (%.0f s)", results_file, results["last_run_seconds"])
    if not args.no_report and not args.quick:
        from bench.report import write_report

        logger.info("wrote %s", write_report(results))
    if failed:
        sys.stderr.write(f"error: stage(s) failed: {', '.join(failed)} (see the log above)\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
