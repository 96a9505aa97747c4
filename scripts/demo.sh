#!/usr/bin/env bash
# The offline demo (docs/toy.md): train a ParetoSlider on the shipped toy base (fill colour vs sketch look), then
# sweep it with pslider-eval against the base model on held-out prompts. About 2 minutes on 2 cores (README).
#
#   bash scripts/demo.sh [OUTPUT_FOLDER]        (default: toy_demo)
#
# Leaves in OUTPUT_FOLDER: toy_slider.safetensors (the ParetoSlider file), front.png (the reward front, ParetoSlider
# vs base), grid.png (held-out prompts across the slider's weights), and eval/ (scores.csv, summary.json, samples).
# Every run starts afresh: the outputs above left by an earlier run are removed first (and it says so), nothing
# else in OUTPUT_FOLDER is touched.
#
# Settings: trainer/configs/toy.toml; extra options go in PSLIDER_TRAIN_ARGS / PSLIDER_EVAL_ARGS (they win), e.g. a
# seconds-long run (tests/test_demo_benchmark.py):
#   PSLIDER_TRAIN_ARGS="--epochs 1 --prompts-per-epoch 2 --images-per-prompt 4 --num-steps 2 --train-timesteps 1" \
#   PSLIDER_EVAL_ARGS="--grid 3 --seeds 0" bash scripts/demo.sh /tmp/demo
set -euo pipefail
out="${1:-toy_demo}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$out"

owned=(toy_slider.safetensors toy_slider.checkpoints toy_slider.logs eval front.png grid.png)
earlier=()
for name in "${owned[@]}"; do
    if [[ -e "$out/$name" ]]; then earlier+=("$name"); fi
done
if (( ${#earlier[@]} )); then
    echo "== $out/ holds an earlier demo run: removing its ${earlier[*]} to start afresh"
    for name in "${earlier[@]}"; do rm -rf -- "${out:?}/$name"; done
fi

echo "== writing the toy world's prompts to $out/ (train: seen in pretraining; held-out: unseen colour/shape pairs)"
python - "$out" <<'PY'
import pathlib, sys
from pslider_core.toy.dataset import heldout_prompts, train_prompts
out = pathlib.Path(sys.argv[1])
(out / "train.txt").write_text("\n".join(train_prompts()) + "\n")
(out / "heldout.txt").write_text("\n".join(heldout_prompts()) + "\n")
PY

echo "== training a ParetoSlider on the shipped toy base (toy_color vs toy_sketch)"
# shellcheck disable=SC2086
pslider-train --config "$here/trainer/configs/toy.toml" --prompts "$out/train.txt" \
    --output "$out/toy_slider.safetensors" ${PSLIDER_TRAIN_ARGS:-}

echo "== sweeping the slider from (1,0) to (0,1) on held-out prompts, with the base model for comparison"
# One torch thread (the toy model is fastest on one) and big batches.
# shellcheck disable=SC2086
pslider-eval --backbone toy --num-threads 1 --checkpoint "$out/toy_slider.safetensors" \
    --include-base --prompts "$out/heldout.txt" --grid 11 --seeds 0,1,2,3 --batch-size 64 --out "$out/eval" \
    ${PSLIDER_EVAL_ARGS:-}

cp "$out/eval/front.png" "$out/eval/grid.png" "$out/"
echo "== done: $out/toy_slider.safetensors, $out/front.png, $out/grid.png"
