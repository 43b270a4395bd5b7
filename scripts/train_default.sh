#!/usr/bin/env bash
# Reproduce the shipped default model: render the training data with the project's own
# scene generator, then pretrain (ITM + MLM) and fine-tune (grounding + VQA) with
# config/train_default.yaml. About an hour on a 2-core CPU. Result: runs/default/model
# (copy it to models/essen-default to ship it).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export MUJOCO_GL="${MUJOCO_GL:-egl}" HF_HUB_OFFLINE=1
DATA="${ESSEN_DATA:-data}"
OUT="${ESSEN_RUN:-runs/default}"
[ -f "$DATA/train/annotations.jsonl" ] || $BIN/essen-datagen --out "$DATA/train" --images 6000 --seed 1 \
    --workers 2 --vary-size --ground 8 --negatives 2 --vqa 10 --captions 4
[ -f "$DATA/val/annotations.jsonl" ] || $BIN/essen-datagen --out "$DATA/val" --images 300 --seed 2 \
    --workers 2 --vary-size
resume=()
[ -d "$OUT/last" ] && resume=(--resume)
$BIN/essen-train --config config/train_default.yaml --data "$DATA/train" --val "$DATA/val" --out "$OUT" "${resume[@]}"
echo "trained model: $OUT/model   (ship it: rm -rf models/essen-default && cp -r $OUT/model models/essen-default)"
