#!/usr/bin/env bash
# Rebuild weights/default from ../shared/data (met-ivory + wood-trade-groups).
# Usage: training/build_default.sh [extra train options]   (from the repository root)
# Data location: $CITES_SHARED_DATA (default ../shared/data). Takes about 10-25 min on 2 cores.
set -euo pipefail
DATA="${CITES_SHARED_DATA:-../shared/data}"
BIN="${BIN:-.venv/bin}"
MODE="${MODE:-full}"
exec "$BIN/cites-vision" train \
  --data "$DATA/met-ivory" --data "$DATA/wood-trade-groups" \
  --label-map training/label_maps/default.tsv \
  --out weights --version default --overwrite \
  --mode "$MODE" --epochs 4 --lr 3e-4 \
  --ood-data "$DATA/imagenet-sample" --ood-method knn-reference \
  --limitation "Trained on museum studio photos of carved ivory, bone and ceramics (met-ivory, 2376 images) and on 175 wood-surface photos (wood-trade-groups); accuracy on photos of seized items taken in the field is not measured." \
  --limitation "No pangolin scales, reptile skins, horn, coral, shells or other wildlife products were in the training data: such images should be answered outside_training_domain, but this is not guaranteed." \
  --limitation "No x-ray images yet: the bundle supports the camera modality only." \
  --limitation "The ivory label mixes elephant ivory, walrus ivory and some bone; it cannot separate them, nor ivory from legal mammoth ivory or bone." \
  --limitation "Wood labels are trade groups learnt from a handful of images each (about 175 in all): treat wood answers as weak hints and refer to an expert; the mahogany folder mixes Swietenia with other mahoganies (Khaya, sapele, santos mahogany)." \
  --limitation "Padauk here is African or Burma padauk: the label answers the padauk group (African populations of Pterocarpus spp. are Appendix II #17 since CoP19); it cannot tell African from Asian padauk, nor P. soyauxii from the other listed Pterocarpus species (P. santalinus, P. erinaceus, P. tinctorius were not in the training data)." \
  "$@"
