"""Source hold-out: train without the phone photos of a dataset, measure on them.

The timber set mixes catalogue shots (wood-database and stock: a sanded or sealed surface
filling the frame) with phone photos of lumber on store shelves. A split by board cannot tell
how the model copes with a capture it never saw, because both kinds sit on every side. This
module writes the data for the measurement that can:

- ``catalogue.csv``: the dataset without its phone photos (train on it, with the other
  datasets);
- ``phone.csv``: the phone photos whose model label keeps catalogue photos (measure on it:
  the model was taught these labels, never this capture);
- ``phone-untaught.csv``: the phone photos whose label has no catalogue photo (the model cannot
  be taught it at all; what it answers for them is an unknown-product figure);
- ``labels.tsv``: the label map without the rows of those photos' classes.

``python -m training.capture_holdout --data ../shared/data/wood-trade-groups --label-map
training/label_maps/default.tsv --out /tmp/holdout`` writes them and prints the ``train`` and
``evaluate`` commands (docs/model-card.md, "The timber set's two sources").
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from training.data import DataError, load_folder, read_label_map, write_manifest
from training.open_set import capture_of

logger = logging.getLogger(__name__)


def write_holdout(data: Path, label_map: Path, out: Path) -> dict[str, Path]:
    """Write the four files of the module docstring into ``out``; returns them by name.
    Raises :class:`DataError` when the dataset has no phone photo or no catalogue photo."""
    samples = load_folder(data)
    classes = read_label_map(label_map).classes  # dataset class -> model label id
    unmapped = sorted({s.label for s in samples} - set(classes))
    if unmapped:
        raise DataError(f"{label_map}: no row for the classes {', '.join(unmapped)} of {data}")
    catalogue = [s for s in samples if capture_of(s.path) == "catalogue"]
    phone = [s for s in samples if capture_of(s.path) == "phone"]
    if not phone or not catalogue:
        raise DataError(f"{data}: needs both phone photos and catalogue photos")
    taught = {classes[s.label] for s in catalogue}  # labels with a catalogue photo
    untaught = {s.label for s in phone if classes[s.label] not in taught}
    out.mkdir(parents=True, exist_ok=True)
    lines = label_map.read_text(encoding="utf-8").splitlines()
    labels = out / "labels.tsv"
    labels.write_text(
        "\n".join(line for line in lines if not _row_of_untaught_class(line, untaught)) + "\n",
        encoding="utf-8",
    )
    return {
        "catalogue": write_manifest(catalogue, out / "catalogue.csv"),
        "phone": write_manifest([s for s in phone if s.label not in untaught], out / "phone.csv"),
        "phone-untaught": write_manifest(
            [s for s in phone if s.label in untaught], out / "phone-untaught.csv"
        ),
        "labels": labels,
    }


def _row_of_untaught_class(line: str, untaught: set[str]) -> bool:
    """True for a label-map row whose dataset class has no catalogue photo."""
    if not line.strip() or line.startswith("#"):
        return False
    return line.split("\t", 1)[0] in untaught


def main(argv: Sequence[str] | None = None) -> int:
    """Write the hold-out files and print the commands that use them."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m training.capture_holdout", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="the dataset folder to split")
    parser.add_argument("--label-map", type=Path, required=True, help="the label map to trim")
    parser.add_argument("--out", type=Path, required=True, help="folder for the four files")
    args = parser.parse_args(argv)
    try:
        files = write_holdout(args.data, args.label_map, args.out)
    except (DataError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    for name, path in files.items():
        logger.info("%s: %s", name, path)
    logger.info(
        "then: cites-vision train --data ../shared/data/met-ivory --data %s --label-map %s "
        "--out %s --version no-phone (and training/build_default.sh's other options); "
        "cites-vision evaluate --bundle %s --data %s",
        files["catalogue"],
        files["labels"],
        args.out / "weights",
        args.out / "weights" / "no-phone",
        files["phone"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
