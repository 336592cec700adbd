"""Feedback export: confirmed and corrected labels as a training manifest plus the images.

The archive (tar.gz) holds ``manifest.csv`` with the columns ``path,label,modality,source,case_id``
(the format ``cites-vision train`` reads; ``path`` is relative to the manifest) and
``images/<sha256>.<ext>``. One row per identification that has feedback (one per photo of a
multi-view identification, all with the object's label and case); its latest entry wins.
A confirmation labels the image with the predicted label (the decision's label, else the top-1
label); a correction with the label it gives, or its taxon id when it names only a taxon.
``case_id`` is the latest feedback's case reference, else the identification's, else its id.
A cell that a spreadsheet would run as a formula gets a leading ``'`` (CSV injection).

**Conflicts.** When officers disagree on one image (the latest labels that different officers
gave it, over every identification of that image, differ), the image is left out of
``manifest.csv`` and listed in ``conflicts.csv`` (``sha256,labels,officers,identifications``)
until a trainer resolves it (``POST /v1/feedback/conflicts/{sha256}/resolve`` or
``cites-vision feedback resolve``); a resolved image is exported once, with the trainer's label.
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

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.imagestore import ImageStore
from service.repository import iter_export_rows, view_shas
from service.tables import Feedback, FeedbackResolution, Identification, StoredImage

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "label", "modality", "source", "case_id")
CONFLICT_COLUMNS = ("sha256", "labels", "officers", "identifications")


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    rows: int
    skipped: int
    path: Path
    conflicts: int = 0


@dataclass(frozen=True)
class Conflict:
    """Officers gave one image different labels; ``labels`` maps each label to its officers."""

    sha256: str
    labels: dict[str, list[str]]
    identifications: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``GET /v1/feedback/conflicts``)."""
        return {
            "sha256": self.sha256,
            "labels": self.labels,
            "identifications": self.identifications,
        }


def officer_labels(
    session: Session, since: datetime | None = None
) -> dict[str, dict[str, tuple[str, Identification, str]]]:
    """Per image sha256: each officer's latest label for it
    (``officer key -> (label, identification, officer name)``)."""
    query = select(Feedback).order_by(Feedback.created_at, Feedback.id)
    if since is not None:
        query = query.where(Feedback.created_at >= since)
    per_image: dict[str, dict[str, tuple[str, Identification, str]]] = {}
    idents: dict[str, tuple[Identification, list[str]] | None] = {}  # read once each
    for feedback in session.scalars(query):
        if feedback.identification_id not in idents:
            row = session.get(Identification, feedback.identification_id)
            idents[feedback.identification_id] = (
                None if row is None else (row, view_shas(session, row))
            )
        found = idents[feedback.identification_id]
        if found is None:
            continue
        ident, shas = found
        label = export_label(ident, feedback)
        if label is None:
            continue
        officer = feedback.created_by or f"name:{feedback.created_by_name}"
        for sha256 in shas:
            per_image.setdefault(sha256, {})[officer] = (label, ident, feedback.created_by_name)
    return per_image


def find_conflicts(session: Session, since: datetime | None = None) -> list[Conflict]:
    """Images officers disagree on that no trainer has resolved yet."""
    resolved = set(session.scalars(select(FeedbackResolution.image_sha256)))
    conflicts = []
    for sha, officers in sorted(officer_labels(session, since).items()):
        labels: dict[str, list[str]] = {}
        for _officer, (label, _ident, name) in sorted(officers.items()):
            labels.setdefault(label, []).append(name)
        if len(labels) > 1 and sha not in resolved:
            idents = sorted({ident.id for _label, ident, _name in officers.values()})
            conflicts.append(Conflict(sha, labels, idents))
    return conflicts


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
    """Write the feedback archive to ``out`` (tar.gz): ``manifest.csv``, ``conflicts.csv`` and
    ``images/``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = io.StringIO()
    writer = csv.writer(manifest, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    conflict_text = io.StringIO()
    conflict_writer = csv.writer(conflict_text, lineterminator="\n")
    conflict_writer.writerow(CONFLICT_COLUMNS)
    conflicts = find_conflicts(session, since)
    held_back = {c.sha256 for c in conflicts}
    for conflict in conflicts:
        conflict_writer.writerow(
            (
                conflict.sha256,
                ";".join(sorted(conflict.labels)),
                ";".join(
                    f"{label}:{'|'.join(names)}" for label, names in sorted(conflict.labels.items())
                ),
                ";".join(conflict.identifications),
            )
        )
    resolutions = {r.image_sha256: r for r in session.scalars(select(FeedbackResolution))}
    rows = skipped = 0
    added: set[str] = set()
    resolved_done: set[str] = set()
    now = time.time()
    with tarfile.open(out, "w:gz") as tar:
        for ident, feedback, image in iter_export_rows(session, since):
            if image.sha256 in held_back:
                continue
            resolution = resolutions.get(image.sha256)
            if resolution is not None:
                if image.sha256 in resolved_done:
                    continue  # a resolved image is exported once, with the trainer's label
                resolved_done.add(image.sha256)
                label: str | None = resolution.label
            else:
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
        for member, text in (("manifest.csv", manifest), ("conflicts.csv", conflict_text)):
            data = text.getvalue().encode("utf-8")
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mtime = int(now)
            tar.addfile(info, io.BytesIO(data))
    logger.info(
        "feedback export: %d rows (%d skipped, %d images held back by conflicts) -> %s",
        rows,
        skipped,
        len(conflicts),
        out,
    )
    return ExportSummary(rows=rows, skipped=skipped, path=out, conflicts=len(conflicts))


def resolve_conflict(
    session: Session,
    sha256: str,
    label: str,
    *,
    by_key: str | None,
    by_name: str,
    note: str | None = None,
) -> None:
    """Record a trainer's label for an image (replacing an earlier resolution); raises
    :class:`LookupError` when no stored image has that sha256."""
    if session.get(StoredImage, sha256) is None:
        raise LookupError(f"no stored image with sha256 {sha256}")
    from service.repository import utcnow

    row = session.get(FeedbackResolution, sha256)
    if row is None:
        row = FeedbackResolution(image_sha256=sha256)
        session.add(row)
    row.label = label
    row.resolved_at = utcnow()
    row.resolved_by = by_key
    row.resolved_by_name = by_name
    row.note = note
    session.commit()
