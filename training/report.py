"""Evaluation reports: metrics as a JSON-ready dict, a Markdown page and two PNG plots.

:func:`classification_report` computes everything from true labels and probabilities (after and
before temperature scaling); :func:`write_report` writes ``<name>.json``, ``<name>.md``,
``<name>-confusion.png`` and ``<name>-reliability.png`` (matplotlib, Agg backend).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model.labels import Label
from training import metrics as m

logger = logging.getLogger(__name__)

TOP_K = (1, 2, 3)
BOOTSTRAP_RESAMPLES = 1000


def _round(value: float, digits: int = 4) -> float:
    return float(round(float(value), digits))


def classification_report(
    y_true: NDArray[np.int64],
    probs: NDArray[np.float64],
    labels: Sequence[Label],
    *,
    probs_uncalibrated: NDArray[np.float64] | None = None,
    groups: Sequence[str] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """All evaluation metrics for one set of images.

    Args:
        y_true: true label index per image.
        probs: calibrated probabilities ``[N, C]`` (what the bundle serves).
        labels: the bundle's labels (ids name the per-class entries).
        probs_uncalibrated: probabilities before temperature scaling, for the "before" ECE.
        groups: optional subset name per image (e.g. the data source); each gets its own
            accuracy with a bootstrap interval under ``subsets``.
        resamples: bootstrap resamples for the 95% intervals.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    c = len(labels)
    y_pred = probs.argmax(axis=1) if len(y_true) else np.zeros(0, dtype=np.int64)
    matrix = m.confusion_matrix(y_true, y_pred, c)
    correct = y_true == y_pred

    def acc_of(idx: NDArray[np.int64]) -> float:
        return float(correct[idx].mean())

    def bal_of(idx: NDArray[np.int64]) -> float:
        return m.balanced_accuracy(y_true[idx], y_pred[idx], c)

    n = len(y_true)
    report: dict[str, Any] = {
        "images": n,
        "accuracy": _round(m.accuracy(y_true, y_pred)),
        "accuracy_ci95": [_round(v) for v in m.bootstrap_ci(acc_of, n, resamples=resamples)],
        "balanced_accuracy": _round(m.balanced_accuracy(y_true, y_pred, c)),
        "balanced_accuracy_ci95": [
            _round(v) for v in m.bootstrap_ci(bal_of, n, resamples=resamples)
        ],
        "top_k": {f"top{k}": _round(m.top_k_accuracy(y_true, probs, k)) for k in TOP_K if k <= c},
        "ece": _round(m.expected_calibration_error(y_true, probs)),
        "per_class": {
            label.id: {
                "precision": _round(s.precision),
                "recall": _round(s.recall),
                "f1": _round(s.f1),
                "support": s.support,
            }
            for label, s in zip(labels, m.per_class_scores(matrix), strict=True)
        },
        "confusion_matrix": {"labels": [lb.id for lb in labels], "matrix": matrix.tolist()},
    }
    if probs_uncalibrated is not None:
        report["ece_before_temperature"] = _round(
            m.expected_calibration_error(y_true, np.asarray(probs_uncalibrated))
        )
    if groups is not None:
        report["subsets"] = {}
        group_arr = np.asarray(groups)
        for name in sorted(set(groups)):
            idx = np.flatnonzero(group_arr == name)
            subset_correct = correct[idx]

            def subset_acc(i: NDArray[np.int64], sc: NDArray[np.bool_] = subset_correct) -> float:
                return float(sc[i].mean())

            present = sorted({int(t) for t in y_true[idx]} | {int(p) for p in y_pred[idx]})
            report["subsets"][name] = {
                "images": len(idx),
                "accuracy": _round(correct[idx].mean()),
                "accuracy_ci95": [
                    _round(v) for v in m.bootstrap_ci(subset_acc, len(idx), resamples=resamples)
                ],
                "balanced_accuracy": _round(m.balanced_accuracy(y_true[idx], y_pred[idx], c)),
                "labels": [labels[i].id for i in present],
            }
    return report


def _plot_confusion(path: Path, report: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["confusion_matrix"]["labels"]
    matrix = np.asarray(report["confusion_matrix"]["matrix"])
    size = max(4.0, 0.6 * len(names) + 2.0)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    high = matrix.max() if matrix.size else 0
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > high / 2 else "black",
                fontsize=8,
            )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_reliability(
    path: Path,
    y_true: NDArray[np.int64],
    curves: dict[str, NDArray[np.float64]],
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for name, probs in curves.items():
        table = m.reliability(y_true, probs)
        used = table.counts > 0
        ece = m.expected_calibration_error(y_true, probs)
        ax.plot(table.confidence[used], table.accuracy[used], "o-", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(report: dict[str, Any], title: str) -> str:
    """A human-readable Markdown page for one report."""
    lo, hi = report["accuracy_ci95"]
    blo, bhi = report["balanced_accuracy_ci95"]
    lines = [
        f"# {title}",
        "",
        f"- images: {report['images']}",
        f"- accuracy: {report['accuracy']:.4f} (95% bootstrap interval {lo:.4f} to {hi:.4f})",
        f"- balanced accuracy: {report['balanced_accuracy']:.4f} ({blo:.4f} to {bhi:.4f})",
        "- top-k: " + ", ".join(f"{k} {v:.4f}" for k, v in report["top_k"].items()),
        f"- ECE after temperature scaling: {report['ece']:.4f}",
    ]
    if "ece_before_temperature" in report:
        lines.append(f"- ECE before temperature scaling: {report['ece_before_temperature']:.4f}")
    for key, value in report.items():
        if key in ("temperature", "ood_flagged", "ood_flagged_imagenet"):
            lines.append(f"- {key}: {value}")
    lines += ["", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label_id, s in report["per_class"].items():
        lines.append(
            f"| {label_id} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | "
            f"{s['support']} |"
        )
    if report.get("subsets"):
        lines += [
            "",
            "| subset | images | accuracy | 95% interval | balanced accuracy |",
            "|---|---|---|---|---|",
        ]
        for name, s in report["subsets"].items():
            slo, shi = s["accuracy_ci95"]
            lines.append(
                f"| {name} | {s['images']} | {s['accuracy']:.4f} | {slo:.4f} to {shi:.4f} | "
                f"{s['balanced_accuracy']:.4f} |"
            )
    names = report["confusion_matrix"]["labels"]
    lines += [
        "",
        "Confusion matrix (rows: true, columns: predicted):",
        "",
        "| | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for name, row in zip(names, report["confusion_matrix"]["matrix"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    folder: Path,
    name: str,
    report: dict[str, Any],
    y_true: NDArray[np.int64],
    probs: NDArray[np.float64],
    *,
    probs_uncalibrated: NDArray[np.float64] | None = None,
    title: str | None = None,
) -> list[Path]:
    """Write ``<name>.json``, ``<name>.md`` and the two PNGs into ``folder``; return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    title = title or f"Evaluation: {name}"
    paths = [
        folder / f"{name}.json",
        folder / f"{name}.md",
        folder / f"{name}-confusion.png",
        folder / f"{name}-reliability.png",
    ]
    paths[0].write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(report, title), encoding="utf-8")
    _plot_confusion(paths[2], report, title)
    curves = {"after temperature": np.asarray(probs)}
    if probs_uncalibrated is not None:
        curves = {"before temperature": np.asarray(probs_uncalibrated), **curves}
    _plot_reliability(paths[3], np.asarray(y_true), curves, title)
    logger.info("wrote report %s", paths[1])
    return paths


def write_loss_curve(history: Sequence[dict[str, float]], path: Path) -> Path:
    """The training report's loss curve: training and validation loss per epoch (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [int(row["epoch"]) for row in history]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(epochs, [row["train_loss"] for row in history], "o-", label="training loss")
    ax.plot(epochs, [row["val_loss"] for row in history], "o-", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_xticks(epochs)
    ax.legend()
    ax.set_title("loss per epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
