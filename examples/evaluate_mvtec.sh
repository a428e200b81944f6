#!/usr/bin/env bash
# Evaluate UniAD on MVTec AD, or any folder in its layout, in the unified setting:
# one model trained on the normal images of all categories together, then
# per-category image AUROC, pixel AUROC, AUPRO, AP and F1-max, and their mean.
#
#   examples/evaluate_mvtec.sh ROOT [OUTPUT] [SKUNIAD EVALUATE OPTIONS...]
#
#   examples/evaluate_mvtec.sh /data/mvtec_anomaly_detection
#   examples/evaluate_mvtec.sh /data/mvtec_anomaly_detection results --category bottle --category cable
#   examples/evaluate_mvtec.sh /data/mvtec_anomaly_detection results --backbone tf_efficientnet_lite0 --epochs 100
#
# Without options this is the paper's recipe (EfficientNet-B4, 224 px,
# 1000 epochs): hours on a GPU. The backbone's ImageNet weights must be in
# timm's cache, or pass --backbone-weights FILE; `skuniad info` lists the
# backbones whose weights come bundled. Results go to OUTPUT/results.md and
# results.json, the model to OUTPUT/model.skuniad, overlays to OUTPUT/overlays/.
set -euo pipefail

if [ $# -lt 1 ]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
root=$1
output=${2:-skuniad-evaluation}
shift $(( $# >= 2 ? 2 : 1 ))

# The test suite runs every example with SKUNIAD_EXAMPLE_TINY=1: a tiny model.
if [ "${SKUNIAD_EXAMPLE_TINY:-0}" = 1 ]; then
    set -- --backbone tf_efficientnet_lite0 --image-size 64 --epochs 1 --hidden-dim 32 \
        --num-heads 2 --feedforward-dim 64 --encoder-layers 1 --decoder-layers 1 \
        --neighbor-size 3 --quiet "$@"
fi

# `python -m skuniad` is the `skuniad` command; PYTHON picks the interpreter (e.g. a venv's)
"${PYTHON:-python}" -m skuniad evaluate --dataset mvtec --root "$root" --output "$output" \
    --overlays --overlays-per-category 3 "$@"
