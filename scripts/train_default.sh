#!/usr/bin/env bash
# Reproduce the shipped default model: render the training data with the project's own
# scene generator, pretrain (ITM + MLM) and fine-tune (grounding + VQA + attribute aid) with
# config/train_default.yaml, then a short third stage with the object-box aid
# (config/train_boxes.yaml, started from the second stage's model with --init). About an
# hour on a 2-core CPU. Result: runs/default/boxes/model (copy it to models/essen-default to
# ship it). Run it again after Ctrl-C: each part resumes where it stopped.
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

# train CONFIG OUT [ARGS...]: one essen-train run, skipped when OUT holds its finished model,
# resumed when OUT holds an interrupted one.
train() {
    local config=$1 out=$2
    shift 2
    [ -f "$out/model/config.yaml" ] && { echo "$out/model: already trained"; return; }
    local resume=()
    [ -f "$out/last/train_state.json" ] && resume=(--resume)
    $BIN/essen-train --config "$config" --data "$DATA/train" --val "$DATA/val" --out "$out" "${resume[@]}" "$@"
}
train config/train_default.yaml "$OUT"
if [ -f "$OUT/boxes/last/train_state.json" ]; then
    train config/train_boxes.yaml "$OUT/boxes"
else
    train config/train_boxes.yaml "$OUT/boxes" --init "$OUT/model"
fi
echo "trained model: $OUT/boxes/model   (ship it: rm -rf models/essen-default && cp -r $OUT/boxes/model models/essen-default)"
