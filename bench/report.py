"""Turn the benchmark results (``docs/benchmarks/results.json``) into docs/benchmarks.md and plots.

``python -m bench.report`` regenerates the page from the stored results without measuring.
Four hand-written sections survive regeneration verbatim: the reliability tests' "Load, 60 s at
concurrency 64", "Analysis of the misses", "Retraining loop" (``bench/retrain_loop.py``'s
figures) and "Test-time augmentation" (``bench/tta.py``'s); each from its heading to the next
``## ``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from bench.common import FIGURES_DIR, REPO_ROOT, RESULTS_FILE

logger = logging.getLogger(__name__)

DOC = REPO_ROOT / "docs" / "benchmarks.md"
PRESERVED = (
    "## Load, 60 s at concurrency 64",
    "## Analysis of the misses",
    "## Retraining loop",
    "## Test-time augmentation",
    "## Multi-view identification",
)
RUN = ".venv/bin/python -m bench.run_all"
BACKEND_NAMES = {
    "pytorch_eager": "PyTorch eager",
    "pytorch_eager_channels_last": "PyTorch eager, channels_last",
    "onnxruntime_fp32": "ONNX Runtime fp32",
    "onnxruntime_int8": "ONNX Runtime INT8",
}
SERVER_NAMES = {
    "cites_vision": "CITES Vision service",
    "litserve": "LitServe + ONNX Runtime fp32",
    "plain_pytorch": "plain FastAPI + PyTorch eager",
    "litserve_int8": "LitServe + ONNX Runtime INT8",
    "litserve_service_api": "LitServe running the service's inference stage (reference)",
}


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100 * value:.0f}%"


def _status(met: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured"}[met]


def unintended_errors(statuses: dict[str, int]) -> int:
    """Responses that are neither a success nor intended back-pressure (503 for the service as
    a whole, 429 for one client over its share)."""
    return sum(
        n
        for s, n in statuses.items()
        if not (s.isdigit() and (200 <= int(s) < 300 or s in ("503", "429")))
    )


UPLOAD_MEMORY_FILE = "upload_memory.json"
"""``bench/upload_memory.py``'s figures, measured on their own (``--out``), beside results.json."""


def goals(results: dict[str, Any], uploads: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every goal of the issue with what this run achieved (``uploads``: the figures of
    ``bench/upload_memory.py``, when there are any)."""
    rows: list[dict[str, Any]] = []
    model = results.get("model") or {}
    ratio = (model.get("ratios") or {}).get("onnxruntime_int8", {}).get("32")
    rows.append(
        {
            "goal": "ONNX Runtime INT8 throughput vs PyTorch eager, batch 32",
            "target": ">= 6x",
            "achieved": f"{_f(ratio, 1)}x" if ratio else "n/a",
            "met": None if ratio is None else ratio >= 6.0,
        }
    )
    shares = (model.get("share_of_peak") or {}).get("onnxruntime_fp32") or {}
    best_batch = max(shares, key=lambda b: shares[b], default=None)
    best = shares.get(best_batch) if best_batch else None
    rows.append(
        {
            "goal": "ONNX Runtime fp32 share of the measured fp32 matmul peak",
            "target": ">= 70%",
            "achieved": (
                f"{_pct(best)} (batch {best_batch}; "
                + ", ".join(f"b{b} {_pct(v)}" for b, v in shares.items())
                + ")"
                if best is not None
                else "n/a"
            ),
            "met": None if best is None else best >= 0.70,
        }
    )
    compare = results.get("compare") or {}
    ratios = compare.get("ratios") or {}
    servers = compare.get("servers") or {}
    for name, target in (("litserve_int8", 1.3), ("litserve", 1.5), ("plain_pytorch", 5.0)):
        value = (ratios.get(name) or {}).get("throughput")
        rows.append(
            {
                "goal": f"service images/s at concurrency 32 vs {SERVER_NAMES[name]}",
                "target": f">= {target}x",
                "achieved": f"{_f(value, 2)}x" if value is not None else "n/a",
                "met": None if value is None else value >= target,
            }
        )
    p50 = (servers.get("cites_vision") or {}).get("phone_p50_ms")
    rows.append(
        {
            "goal": "12 MP phone JPEG end to end, one client, p50",
            "target": "<= 40 ms",
            "achieved": f"{_f(p50, 0)} ms" if p50 is not None else "n/a",
            "met": None if p50 is None else p50 <= 40.0,
        }
    )
    service = results.get("service") or {}
    errors, runs = 0, 0
    for key in ("batching_on", "batching_off"):
        for by_c in (service.get(key) or {}).values():
            for result in by_c.values():
                errors += unintended_errors(result.get("statuses", {}))
                errors += unintended_errors(result.get("item_errors", {}))
                runs += 1
    ours = servers.get("cites_vision") or {}
    if ours:
        errors += unintended_errors(ours.get("statuses", {}))
        runs += len(ours.get("images_per_s_per_round", []))
    rows.append(
        {
            "goal": "errors under load apart from intended 503/429s (every service run above)",
            "target": "0",
            "achieved": f"{errors} in {runs} load runs" if runs else "n/a",
            "met": None if not runs else errors == 0,
        }
    )
    memory = service.get("batching_on_peak_rss_mib")
    rows.append(
        {
            "goal": "service peak memory (RSS) at concurrency 64",
            "target": "< 1 GB",
            "achieved": f"{_f(memory, 0)} MiB" if memory else "n/a",
            "met": None if not memory else memory * 2**20 < 1e9,
        }
    )
    peak = (uploads or {}).get("peak_sampled_pss_mib")
    goal = (uploads or {}).get("goal_mib", 700.0)
    rows.append(
        {
            "goal": (
                f"{(uploads or {}).get('clients', 64)} concurrent 14 MB uploads: peak memory of "
                "the service's processes (Pss, `bench/upload_memory.py`)"
            ),
            "target": f"< {_f(goal, 0)} MiB",
            "achieved": f"{_f(peak, 0)} MiB" if peak else "n/a",
            "met": None if not peak else peak < goal,
        }
    )
    return rows


def _bar_chart(
    path: Path,
    title: str,
    groups: list[str],
    series: dict[str, list[float]],
    ylabel: str,
    hline: tuple[float, str] | None = None,
    log: bool = False,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, labels=[_f(v, 0) for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    if hline is not None:
        ax.axhline(hline[0], color="black", linestyle="--", linewidth=1)
        ax.annotate(hline[1], (len(groups) - 0.5, hline[0]), ha="right", va="bottom", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_model(model: dict[str, Any], path: Path) -> None:
    """Images/s per backend and batch, with the fp32 ceiling implied by the measured peak."""
    backends = model["backends"]
    batches = list(next(iter(backends.values())).keys())
    series = {
        BACKEND_NAMES.get(n, n): [backends[n][b]["images_per_s"] for b in batches] for n in backends
    }
    gflop = model.get("gflop_per_image") or float("nan")
    ceiling = model["peak_gflops"] / gflop if gflop == gflop else None
    _bar_chart(
        path,
        "Model backends: images/s (median of rounds)",
        [f"batch {b}" for b in batches],
        series,
        "images / s",
        hline=(ceiling, f"fp32 ceiling {ceiling:.0f} img/s") if ceiling else None,
    )


def plot_preprocess(pre: dict[str, Any], path: Path) -> None:
    """Decode + preprocess time per image, full vs reduced-scale decode."""
    images = list(dict.fromkeys(r["image"] for r in pre["rows"]))
    full = [
        next(r["total_ms"] for r in pre["rows"] if r["image"] == i and r["decode"] == "full")
        for i in images
    ]
    reduced = [
        next(
            (r["total_ms"] for r in pre["rows"] if r["image"] == i and r["decode"] != "full"),
            float("nan"),
        )
        for i in images
    ]
    _bar_chart(
        path,
        "Decode + preprocess per image (ms, median)",
        images,
        {"full decode": full, "reduced-scale decode": reduced},
        "ms",
    )


def plot_service(service: dict[str, Any], path: Path) -> None:
    """Images/s and p99 latency against concurrency, both endpoints, batching on/off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    for key, style in (("batching_on", "-"), ("batching_off", "--")):
        for endpoint, marker in (("single", "o"), ("batch", "s")):
            runs = (service.get(key) or {}).get(endpoint) or {}
            cs = [int(c) for c in runs]
            label = f"{endpoint}, micro-batching {key.split('_')[1]}"
            left.plot(
                cs, [runs[str(c)]["images_per_s"] for c in cs], style, marker=marker, label=label
            )
            right.plot(cs, [runs[str(c)]["p99_ms"] for c in cs], style, marker=marker, label=label)
    raw = (service.get("raw_predictor") or {}).get("images_per_s")
    if raw:
        left.axhline(raw, color="black", linewidth=1, linestyle=":")
        left.annotate(f"raw predictor {raw:.0f} img/s", (1, raw), va="bottom", fontsize=8)
    for ax, title, ylabel in ((left, "Throughput", "images / s"), (right, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_compare(compare: dict[str, Any], path: Path) -> None:
    """Images/s at concurrency 32 and 12 MP single-client p50 for the three servers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = compare["servers"]
    names = [SERVER_NAMES.get(n, n).replace(" + ", "\n+ ").replace(" (", "\n(") for n in servers]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), dpi=110)
    for ax, key, title, ylabel in (
        (left, "images_per_s", f"images/s at concurrency {compare['concurrency']}", "images / s"),
        (right, "phone_p50_ms", "12 MP JPEG, one client: p50", "ms"),
    ):
        values = [servers[n][key] for n in servers]
        colours = ["#2a7", "#57c", "#c75", "#99b"][: len(values)]
        bars = ax.bar(range(len(values)), values, color=colours)
        ax.bar_label(bars, labels=[_f(v, 0) for v in values], fontsize=8)
        ax.set_xticks(range(len(values)), names, fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    right.axhline(40, color="black", linestyle="--", linewidth=1)
    right.annotate("goal 40 ms", (len(servers) - 0.5, 40), ha="right", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_training(training: dict[str, Any], path: Path) -> None:
    """Images/s of each fine-tuning mode."""
    modes = training["modes"]
    _bar_chart(
        path,
        "Fine-tuning cost (images/s, batch 32)",
        list(modes),
        {"images/s": [modes[m]["images_per_s"] for m in modes]},
        "images / s",
    )


def _short_command(command: Any) -> str:
    """The command without its long free-text options (``--limitation ...``)."""
    text = str(command or "")
    head = text.split(" --limitation ", 1)[0]
    return head + (" --limitation ..." if head != text else "")


def _preserved(existing: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    for heading in PRESERVED:
        start = existing.find(heading + "\n")
        if start < 0:
            continue
        end = existing.find("\n## ", start + len(heading))
        sections[heading] = existing[start : end if end >= 0 else len(existing)].rstrip() + "\n"
    return sections


def _figure(lines: list[str], name: str, alt: str, command: str) -> None:
    lines += [f"![{alt}](benchmarks/{name})", "", f"Figure command: `{command}`", ""]


def render(
    results: dict[str, Any], existing: str = "", uploads: dict[str, Any] | None = None
) -> str:
    """The whole Markdown page for ``results``; preserved sections come from ``existing``,
    the upload memory goal from ``uploads``."""
    keep = _preserved(existing)
    machine = results.get("machine", {})
    bundle = results.get("bundle", {})
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`.venv/bin/python -m bench.run_all`, "
        f"{_f(results.get('total_seconds', 0) / 60, 1)} min for the last full run) from "
        "`docs/benchmarks/results.json`; `python -m bench.report` re-renders this page without "
        "measuring. Do not edit it by hand except the sections named in `bench/report.py`.",
        "",
        *(
            [
                f"- Machine: {machine.get('cpus')} CPUs ({machine.get('cpu')}), "
                f"{machine.get('memory_gib')} GiB; Python {machine.get('python')}, "
                f"ONNX Runtime {machine.get('onnxruntime')}, PyTorch {machine.get('torch')}, "
                f"numpy {machine.get('numpy')}.",
                f"- Run: {machine.get('date')}, commit `{machine.get('commit')}`"
                + (
                    f"; load average {machine['load_average']} at the start (2 CPUs: above 2 "
                    "the machine is shared and absolute figures are slow)."
                    if machine.get("load_average") is not None
                    else "."
                ),
                f"- Bundle: `{bundle.get('path')}` (version `{bundle.get('version')}`)"
                + (
                    " - a **stand-in** made by `bench/devbundle.py` because `weights/default` "
                    "was missing"
                    if bundle.get("stand_in")
                    else ""
                )
                + ".",
            ]
            if machine
            else ["- No run recorded yet: run `make bench`."]
        ),
        "- Method: this machine is shared and flips between a fast and a slow CPU state within "
        "minutes, so everything compared is measured in the same run, interleaved over rounds; "
        "ratios are taken within a round and the median of per-round ratios is reported. Servers "
        "run in their own processes on loopback; the load generator (`bench/loadgen.py`) is a "
        "separate process with a bounded number of requests and a time limit.",
        "",
        "## Achieved vs goal",
        "",
        "| goal | target | achieved | |",
        "|---|---|---|---|",
    ]
    for row in goals(results, uploads):
        lines.append(
            f"| {row['goal']} | {row['target']} | {row['achieved']} | {_status(row['met'])} |"
        )
    lines.append("")

    model = results.get("model")
    lines += ["## 1. Model backends", ""]
    if model:
        gflop = model.get("gflop_per_image")
        lines += [
            f"Same network and input ({model['input_size']}x{model['input_size']}, random data), "
            f"{model['threads']} threads, {model['rounds']} interleaved rounds, each backend in "
            "its own process (idle while another is timed). Model cost "
            f"(`torch.utils.flop_counter`, 2 FLOPs per multiply-add): **{_f(gflop, 3)} GFLOP per "
            "image**. Measured fp32 matmul peak (best of numpy, ONNX Runtime (MLAS) and torch "
            "2048x2048 sgemm, median over rounds): "
            f"**{_f(model['peak_gflops'], 0)} GFLOP/s**, i.e. a ceiling of "
            f"{_f(model['peak_gflops'] / gflop if gflop else None, 0)} images/s in fp32.",
            "",
            "| backend | batch | latency per batch (ms) | images/s | x PyTorch eager "
            "| share of fp32 peak |",
            "|---|---|---|---|---|---|",
        ]
        for name, by_batch in model["backends"].items():
            for batch, row in by_batch.items():
                ratio = (model.get("ratios") or {}).get(name, {}).get(batch)
                lines.append(
                    f"| {BACKEND_NAMES.get(name, name)} | {batch} | {_f(row['latency_ms'])} "
                    f"| {_f(row['images_per_s'])} | {_f(ratio, 2) if ratio else '1.00'} "
                    f"| {_pct(model['share_of_peak'][name][batch])} |"
                )
        fp32_rounds = model["backends"].get("onnxruntime_fp32") or {}
        if fp32_rounds:
            per_batch = "; ".join(
                f"batch {b}: " + ", ".join(_pct(v) for v in r.get("share_of_peak_per_round", []))
                for b, r in fp32_rounds.items()
            )
            peaks = ", ".join(_f(p, 0) for p in model["peak_gflops_per_round"])
            lines += [
                "",
                f"Per round (the machine's state changes between rounds): peak {peaks} GFLOP/s; "
                f"ONNX Runtime fp32 share of that round's peak {per_batch}.",
            ]
        lines += [
            "",
            "INT8 does integer arithmetic, so its share of the *fp32* peak can exceed "
            "what fp32 can reach; it is shown for scale only. INT8 file: "
            f"{model.get('int8_source') or 'none'}.",
            "",
        ]
        _figure(lines, "model_backends.png", "images/s per backend", f"{RUN} --only model")
    else:
        lines += ["Not measured in this run.", ""]

    pre = results.get("preprocess")
    lines += ["## 2. Preprocessing", ""]
    if pre:
        from bench.bench_preprocess import markdown

        lines += [
            f"`bench/bench_preprocess.py`, median of {pre['runs']} runs, one thread. "
            "Reduced-scale decoding is Pillow's JPEG draft mode (DCT scaling) to the smallest "
            "scale that still covers the resize target; TIFF has no such mode.",
            "",
            markdown(pre),
            "",
        ]
        _figure(lines, "preprocess.png", "decode and preprocess time", f"{RUN} --only preprocess")
    else:
        lines += ["Not measured in this run.", ""]

    service = results.get("service")
    lines += ["## 3. The service under load", ""]
    if service:
        raw = service.get("raw_predictor") or {}
        lines += [
            "`cites-vision serve` with the bundle above (precision `auto`: the service reported "
            f"`{(service.get('active_model') or {}).get('precision', '?')}`), anonymous access, a "
            f"fresh SQLite data directory; every identification is stored as in production. Each "
            f"cell is one bounded run of {_f(service['duration_s'], 0)} s. The batch endpoint gets "
            f"{service.get('batch_images', 8)} images per request. Real photos from "
            f"`../shared/data` (ivory and wood sets, up to 512 px), {service.get('images', '?')} "
            "images sent in turn. Memory is the peak RSS (VmHWM) of the server process so far.",
            "",
        ]
        for key, title in (
            ("batching_on", "Micro-batching on (default settings)"),
            ("batching_off", "Micro-batching off (`CITES_BATCH_MAX_SIZE=1`)"),
        ):
            lines += [
                f"### {title}",
                "",
                "| endpoint | clients | images/s | p50 ms | p95 ms | p99 ms | requests "
                "| statuses | server CPU ms per image | peak RSS MiB |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for endpoint, by_c in (service.get(key) or {}).items():
                for c, r in by_c.items():
                    statuses = ", ".join(f"{s}: {n}" for s, n in r["statuses"].items())
                    if r.get("item_errors"):
                        statuses += "; failed images " + ", ".join(
                            f"{s}: {n}" for s, n in r["item_errors"].items()
                        )
                    lines.append(
                        f"| {endpoint} | {c} | {_f(r['images_per_s'])} | {_f(r['p50_ms'], 0)} "
                        f"| {_f(r['p95_ms'], 0)} | {_f(r['p99_ms'], 0)} | {r['requests']} "
                        f"| {statuses} | {_f(r.get('cpu_ms_per_image'))} "
                        f"| {_f(r['peak_rss_mib'], 0)} |"
                    )
            lines.append("")
        on = (service.get("batching_on") or {}).get("single", {}).get("32", {})
        if raw.get("images_per_s") and on:
            lines += [
                f"Raw predictor in-process on the same images (decode, preprocess, inference and "
                f"decision, batch {raw['batch']}): **{_f(raw['images_per_s'])} images/s**. The "
                f"service at 32 clients on the single endpoint delivers "
                f"**{_pct(on['images_per_s'] / raw['images_per_s'])}** of it.",
                "",
            ]
        _figure(
            lines, "service_load.png", "service throughput and latency", f"{RUN} --only service"
        )
    else:
        lines += ["Not measured in this run.", ""]

    lines.append(
        keep.get(
            PRESERVED[0],
            PRESERVED[0] + "\n\nSection kept for the reliability "
            "tests (not generated by `make bench`).\n",
        )
    )

    compare = results.get("compare")
    lines += ["## 4. The alternatives, side by side", ""]
    if compare:
        lines += [
            "The servers run at once; each is measured in turn while the others are paused "
            "(SIGSTOP: LitServe's loops poll even when idle), "
            f"{len(next(iter(compare['servers'].values()))['images_per_s_per_round'])} rounds, "
            "the order rotating each round: our service (default settings: precision `auto`, "
            "the bundle's INT8 file when it has one; here it reported "
            f"`{(compare.get('active_model') or {}).get('precision', '?')}`), "
            "`bench/servers/plain_torch.py` (FastAPI, one PyTorch eager forward per request, "
            "full-size PIL decode and resize: what most teams write first) and "
            "`bench/servers/litserve_onnx.py` (LitServe, the server SpeciesNet uses, with the "
            "bundle's `model.onnx` in fp32, dynamic batching up to 16 with a 5 ms timeout, the "
            "same full-size decode), the same LitServe server on the bundle's INT8 file (the "
            "file our service serves: issue 12's baseline), and, for reference, "
            "`bench/servers/litserve_service_api.py`: LitServe running our own inference stage "
            "(`service.inference.PredictorAPI`, the core's preprocessing, the INT8 predictor) "
            "without storing or recording anything. Same load "
            "generator, same images; every upload carries a unique JPEG comment, so our "
            "content-addressed store writes every image, as it would for officers' photos. The "
            "PyTorch server builds the bundle's architecture with an untrained head: the cost is "
            "the same, the answers are not. *Server CPU ms per image* is the user + system time "
            "of the server's processes during the run divided by the images answered: on a "
            "shared machine it moves much less than images/s and shows what each image costs.",
            "",
            f"| server | images/s at {compare['concurrency']} clients (per round) | p50 / p99 ms "
            "under load | server CPU ms per image | 12 MP JPEG p50 ms, one client (per round) "
            "| CPU ms per 12 MP image | non-2xx | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, s in compare["servers"].items():
            per_round = ", ".join(_f(v, 0) for v in s["images_per_s_per_round"])
            phone = ", ".join(_f(v, 0) for v in s["phone_p50_ms_per_round"])
            lines.append(
                f"| {SERVER_NAMES.get(name, name)} | **{_f(s['images_per_s'])}** ({per_round}) "
                f"| {_f(s['p50_ms_load'], 0)} / {_f(s['p99_ms_load'], 0)} "
                f"| {_f(s.get('cpu_ms_per_image'))} "
                f"| **{_f(s['phone_p50_ms'], 0)}** ({phone}) "
                f"| {_f(s.get('phone_cpu_ms_per_image'))} "
                f"| {s['errors'] + s['phone_errors']} | {_f(s['peak_rss_mib'], 0)} |"
            )
        lines += [
            "",
            "| ours vs | throughput ratio (median of per-round) | 12 MP latency "
            "speed-up (median of per-round) | their CPU per image / ours |",
            "|---|---|---|---|",
        ]
        for name, r in compare["ratios"].items():
            lines.append(
                f"| {SERVER_NAMES.get(name, name)} | {_f(r['throughput'], 2)}x "
                f"| {_f(r['phone_latency_speedup'], 2)}x | {_f(r.get('cpu_per_image'), 2)}x |"
            )
        lines.append("")
        _figure(lines, "alternatives.png", "ours vs the alternatives", f"{RUN} --only compare")
    else:
        lines += ["Not measured in this run.", ""]

    training = results.get("training")
    lines += ["## 5. Training", ""]
    if training:
        modes = training["modes"]
        lines += [
            f"The product's own fine-tuning modes (`training/train.py`), batch {modes['batch']}, "
            f"{modes['size']}x{modes['size']}, {modes['threads']} threads, channels_last, on "
            "ready tensors (model compute only; decode and augmentation of files come on top). "
            "`head` is one forward pass per image (features are computed once and cached, the "
            "linear head fit on them is negligible); `last` and `full` are AdamW steps.",
            "",
            "| mode | images/s |",
            "|---|---|",
        ]
        for mode, row in modes["modes"].items():
            lines.append(f"| {mode} | {_f(row['images_per_s'])} |")
        rebuild = training.get("rebuild") or {}
        lines += [""]
        if rebuild.get("recorded_seconds"):
            lines.append(
                f"Time to rebuild the default bundle: its manifest records "
                f"**{_f(rebuild['recorded_seconds'] / 60, 1)} min** for the whole pipeline on "
                f"this kind of machine (mode `{rebuild.get('mode')}`; command "
                f"`{_short_command(rebuild.get('command'))}`)."
            )
        if rebuild.get("measured_seconds"):
            lines.append(
                f"Measured here with `{RUN} --only rebuild` (`training/build_default.sh` into a "
                f"scratch folder): **{_f(rebuild['measured_seconds'] / 60, 1)} min**."
            )
        if not rebuild.get("recorded_seconds") and not rebuild.get("measured_seconds"):
            lines.append(
                "Time to rebuild the default bundle: not known (the manifest records no "
                f"duration; measure it with `{RUN} --only rebuild`, 10-25 min)."
            )
        lines.append("")
        _figure(lines, "training.png", "fine-tuning images/s", f"{RUN} --only training")
    else:
        lines += ["Not measured in this run.", ""]

    profiles = results.get("profiles") or {}
    if profiles:
        lines += [
            "## Profiles",
            "",
            "py-spy samples of the service process while a load ran (idle threads "
            "excluded). *Self* is where the CPU was; *inclusive* ranks the product's own "
            "functions (`model/`, `service/`).",
            "",
        ]
        for name, prof in profiles.items():
            lines += [
                f"### {name} ({prof.get('samples', 0)} samples)",
                "",
                "| self | share | | product function (inclusive) | share |",
                "|---|---|---|---|---|",
            ]
            selfs, incl = prof.get("self", []), prof.get("inclusive", [])
            for i in range(max(len(selfs), len(incl))):
                a = selfs[i] if i < len(selfs) else None
                b = incl[i] if i < len(incl) else None
                lines.append(
                    f"| {a['function'] if a else ''} | {_pct(a['share']) if a else ''} | "
                    f"| {b['function'] if b else ''} | {_pct(b['share']) if b else ''} |"
                )
            lines.append("")

    lines.append(keep.get(PRESERVED[1], PRESERVED[1] + "\n\nNo analysis written for this run.\n"))
    for heading in PRESERVED[2:]:  # measured by retrain_loop, tta and multiview, not run_all
        if heading in keep:
            lines += ["", keep[heading]]
    return "\n".join(lines).rstrip() + "\n"


def make_figures(results: dict[str, Any], folder: Path = FIGURES_DIR) -> list[Path]:
    """Write every figure whose data is in ``results``; returns the files written."""
    written = []
    for key, name, plot in (
        ("model", "model_backends.png", plot_model),
        ("preprocess", "preprocess.png", plot_preprocess),
        ("service", "service_load.png", plot_service),
        ("compare", "alternatives.png", plot_compare),
        ("training", "training.png", plot_training),
    ):
        data = results.get(key)
        if not data:
            continue
        if key == "training":
            data = data["modes"]
        try:
            plot(data, folder / name)
            written.append(folder / name)
        except (KeyError, ValueError, StopIteration) as exc:
            logger.warning("figure %s skipped: %s", name, exc)
    return written


def write_report(results: dict[str, Any], doc: Path = DOC, folder: Path = FIGURES_DIR) -> Path:
    """Write the figures and the page; returns the page's path."""
    make_figures(results, folder)
    existing = doc.read_text() if doc.is_file() else ""
    upload_file = folder / UPLOAD_MEMORY_FILE
    uploads = json.loads(upload_file.read_text()) if upload_file.is_file() else None
    doc.write_text(render(results, existing, uploads))
    return doc


def main(argv: list[str] | None = None) -> int:
    """Re-render docs/benchmarks.md and the figures from the stored results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--results", type=Path, default=RESULTS_FILE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.results.is_file():
        sys.stderr.write(f"error: no results at {args.results}; run `make bench` first\n")
        return 2
    path = write_report(json.loads(args.results.read_text()))
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
