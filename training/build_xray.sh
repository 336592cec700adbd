#!/usr/bin/env bash
# Rebuild weights/xray: synthetic composites by projection, training, screening evaluation.
# Usage: training/build_xray.sh   (from the repository root; see docs/xray.md for the figures)
# Data location: $CITES_SHARED_DATA (default ../shared/data). Work folder: $WORK (default
# runs/xray-build). Takes about 30-40 min on 2 shared cores.
set -euo pipefail
DATA="${CITES_SHARED_DATA:-../shared/data}"
BIN="${BIN:-.venv/bin}"
WORK="${WORK:-runs/xray-build}"
rm -rf "$WORK/synth"
"$BIN/cites-vision" xray synth --out "$WORK/synth" --per-class 100 --test-per-class 50 \
  --max-side 384 --exclude-like "$DATA/xray-baggage" \
  --ivory "$DATA/met-ivory/ivory" --porcelain "$DATA/met-ivory/non_ivory" \
  --timber "$DATA/wood-trade-groups" --backgrounds "$DATA/xray-backgrounds/scans"
"$BIN/cites-vision" train --data "$WORK/synth/train.csv" --label-map training/label_maps/xray.tsv \
  --out weights --version xray --overwrite --modality xray --augment xray-pseudocolour \
  --crop squash --mode last --epochs 6 --views 2 --cache-dir "$WORK/cache" \
  --limitation "Trained only on synthetic composites: objects cut from museum and wood photos, given a thickness and a material (xraydb attenuation), projected into real SIXray baggage scans (cites-vision xray synth). No real x-ray image of a wildlife product was seen; detection rates are measured on held-out composites, not on real seizures." \
  --limitation "Answers are suspicions for an operator (suspected ivory or bone, suspected timber, porcelain look-alike, no wildlife product): x-ray cannot tell species, elephant from walrus ivory, ivory from bone, or a listed timber from an unlisted one." \
  --limitation "The pseudo-colour palette is fitted to SIXray scans; scanners of other makes colour materials differently and may need their own bundle." \
  --limitation "Pangolin scales, horn, reptile leather and other wildlife products were not in the training data." \
  "$@"
"$BIN/cites-vision" xray evaluate --bundle weights/xray --data "$WORK/synth/test.csv" \
  --real "$DATA/xray-baggage" --out "$WORK/screening.json"
