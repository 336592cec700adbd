"""Labels: what a model predicts, stored as a TSV file beside the model.

A label is a product class with a stable id, tied to a taxon of the taxonomy (``kind`` ``cites``)
or to a legal look-alike material (``lookalike``) or to "not wildlife" (``not_wildlife``). The file
has the header ``index id name taxon_id kind``; ``index`` is the model output position and runs
0..C-1 in order. A bad line fails with an error that names the file and the line.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

LabelKind = Literal["cites", "lookalike", "not_wildlife"]
LABEL_KINDS: tuple[str, ...] = get_args(LabelKind)
HEADER: tuple[str, ...] = ("index", "id", "name", "taxon_id", "kind")
_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


class LabelsError(ValueError):
    """A labels file or label list is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Label:
    """One model output: ``index`` (position in the logits), stable ``id``, display ``name``,
    ``taxon_id`` (a taxonomy id; for look-alikes the id of the look-alike material, may be empty for
    ``not_wildlife``) and ``kind``."""

    index: int
    id: str
    name: str
    taxon_id: str
    kind: LabelKind

    @property
    def is_cites(self) -> bool:
        """True when the label stands for CITES-listed material."""
        return self.kind == "cites"

    def to_dict(self) -> dict[str, object]:
        """The label as a JSON-ready dict."""
        return {
            "index": self.index,
            "id": self.id,
            "name": self.name,
            "taxon_id": self.taxon_id,
            "kind": self.kind,
        }


def _check_label(label: Label, position: int, seen: set[str], where: str) -> None:
    """Check one label at ``position``; ``seen`` collects ids. Raises :class:`LabelsError`."""
    what = f"{where}: label {label.id!r}"
    if label.index != position:
        raise LabelsError(f"{what}: index must be {position} (indices run 0..C-1 in order)")
    if not _ID_PATTERN.match(label.id):
        raise LabelsError(
            f"{what}: id must be lower-case letters, digits, '_', '-' or '.', e.g. 'ivory'"
        )
    if label.id in seen:
        raise LabelsError(f"{what}: duplicate id")
    seen.add(label.id)
    if label.kind not in LABEL_KINDS:
        raise LabelsError(f"{what}: kind {label.kind!r} is not one of {', '.join(LABEL_KINDS)}")
    if label.kind == "cites" and not label.taxon_id:
        raise LabelsError(f"{what}: a 'cites' label needs a taxon_id")
    if not label.name.strip():
        raise LabelsError(f"{what}: empty name")


def validate_labels(labels: Sequence[Label], source: str = "labels") -> None:
    """Check indices run 0..C-1, ids are unique and well formed, kinds known, CITES labels have a
    taxon. Raises :class:`LabelsError` naming ``source``."""
    if not labels:
        raise LabelsError(f"{source}: no labels")
    seen: set[str] = set()
    for position, label in enumerate(labels):
        _check_label(label, position, seen, source)


def parse_labels(text: str, source: str = "labels") -> list[Label]:
    """Parse the TSV text of a labels file; errors name ``source`` and the line number."""
    lines = text.splitlines()
    if not lines or tuple(c.strip() for c in lines[0].split("\t")) != HEADER:
        raise LabelsError(
            f"{source}:1: header must be the tab-separated columns {' '.join(HEADER)}"
        )
    labels: list[Label] = []
    seen: set[str] = set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if len(cells) != len(HEADER):
            raise LabelsError(
                f"{source}:{number}: expected {len(HEADER)} tab-separated columns, got {len(cells)}"
            )
        index_text, label_id, name, taxon_id, kind = (c.strip() for c in cells)
        try:
            index = int(index_text)
        except ValueError:
            raise LabelsError(
                f"{source}:{number}: index {index_text!r} is not an integer"
            ) from None
        if kind not in LABEL_KINDS:
            raise LabelsError(
                f"{source}:{number}: kind {kind!r} is not one of {', '.join(LABEL_KINDS)}"
            )
        label = Label(index, label_id, name, taxon_id, cast(LabelKind, kind))
        _check_label(label, len(labels), seen, f"{source}:{number}")
        labels.append(label)
    validate_labels(labels, source)
    return labels


def read_labels(path: Path) -> list[Label]:
    """Read a labels TSV file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read labels file ({exc.strerror})") from exc
    except UnicodeDecodeError:
        raise LabelsError(f"{path}: labels file is not UTF-8 text") from None
    return parse_labels(text, str(path))


def format_labels(labels: Sequence[Label]) -> str:
    """The TSV text for ``labels`` (validated first)."""
    validate_labels(labels)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE)
    writer.writerow(HEADER)
    for label in labels:
        for text in (label.id, label.name, label.taxon_id):
            if "\t" in text or "\n" in text:
                raise LabelsError(f"label {label.id!r}: tabs and newlines are not allowed")
        writer.writerow([label.index, label.id, label.name, label.taxon_id, label.kind])
    return buffer.getvalue()


def write_labels(path: Path, labels: Sequence[Label]) -> None:
    """Write ``labels`` as a TSV file with the header ``index id name taxon_id kind``."""
    Path(path).write_text(format_labels(labels), encoding="utf-8")
