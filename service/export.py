"""Feedback export: confirmed and corrected labels as a training manifest plus the images.

The archive (tar.gz) holds ``manifest.csv`` with the columns ``path,label,modality,source,case_id``
(the format ``cites-vision train`` reads; ``path`` is relative to the manifest) and
``images/<sha256>.<ext>``. One row per identification that has feedback; its latest entry wins.
A confirmation labels the image with the predicted label (the decision's label, else the top-1
label); a correction with the label it gives, or its taxon id when it names only a taxon.
``case_id`` is the latest feedback's case reference, else the identification's, else its id.
A cell that a spreadsheet would run as a formula gets a leading ``'`` (CSV injection).
"""

from __future__ import annotations

import csv
import io
import logging
import tarfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from service.imagestore import ImageStore
from service.repository import iter_export_rows
from service.tables import Feedback, Identification

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "label", "modality", "source", "case_id")


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    rows: int
    skipped: int
    path: Path


def predicted_label(result: dict[str, Any]) -> str | None:
    """The label an identification predicted: the decision's label, else the top-1 label."""
    decision = result.get("decision") or {}
    if decision.get("label"):
        return str(decision["label"])
    top = result.get("top_k") or []
    return str(top[0]["label"]) if top else None


def export_label(ident: Identification, feedback: Feedback) -> str | None:
    """The training label of an identification given its latest feedback."""
    if feedback.verdict == "confirm":
        return predicted_label(ident.result)
    return feedback.label or feedback.taxon_id


def export_case_id(ident: Identification, feedback: Feedback) -> str:
    """The manifest's ``case_id``: the feedback's case reference, else the identification's,
    else the identification id (so that training groups the photos of one seizure)."""
    return feedback.case_ref or ident.case_ref or ident.id


FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: str) -> str:
    """``value`` with a leading ``'`` when a spreadsheet would read it as a formula (it starts
    with ``= + - @``, a tab or a carriage return): OWASP's advice against CSV injection. The
    values the training reader needs (paths, labels, modalities) never start so."""
    return "'" + value if value.startswith(FORMULA_LEADS) else value


def write_export(
    session: Session, store: ImageStore, out: Path, *, since: datetime | None = None
) -> ExportSummary:
    """Write the feedback archive to ``out`` (tar.gz)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = io.StringIO()
    writer = csv.writer(manifest, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    rows = skipped = 0
    added: set[str] = set()
    now = time.time()
    with tarfile.open(out, "w:gz") as tar:
        for ident, feedback, image in iter_export_rows(session, since):
            label = export_label(ident, feedback)
            source = store.path_of(image.path)
            if label is None or not source.is_file():
                logger.warning("export: skipping %s (no label or image file missing)", ident.id)
                skipped += 1
                continue
            name = f"images/{Path(image.path).name}"
            if name not in added:
                tar.add(source, arcname=name, recursive=False)
                added.add(name)
            writer.writerow(
                tuple(
                    spreadsheet_safe(value)
                    for value in (
                        name,
                        label,
                        ident.modality,
                        f"feedback:{ident.id}",
                        export_case_id(ident, feedback),
                    )
                )
            )
            rows += 1
        data = manifest.getvalue().encode("utf-8")
        info = tarfile.TarInfo("manifest.csv")
        info.size = len(data)
        info.mtime = int(now)
        tar.addfile(info, io.BytesIO(data))
    logger.info("feedback export: %d rows (%d skipped) -> %s", rows, skipped, out)
    return ExportSummary(rows=rows, skipped=skipped, path=out)
