#!/usr/bin/env bash
# The pelvis at 224² and at 512² at the demo's scale on a CPU: a proxy for benchmarks/gpu/resolution.sh (which
# trains DiffMa-B/2), not a substitute. 8 full-size synthetic pelvis patients (slices of about 550 x 360 at
# 1 mm; split 0.5/0.25/0.25: 4 train, 2 val, 2 test), prepared at both sizes; one demo VAE trained on the
# 224² slices (convolutional, so it encodes either size); a demo CT Vision Embedder per size; then
# benchmarks/table2.py with the demo's DiffMa-S/4 (row diffma-latent-tokens) on the same number of training
# images at each size (STEPS of 8, default 1500: the demo's budget), beside the calibration rows and the VAE
# ceiling of that size, and a montage of each table. About an hour on 2 cores, most of it the 512² row.
# From the repository root:  bash benchmarks/resolution_cpu.sh [WORK]     (resumable)
set -euo pipefail
work=${1:-/tmp/diffma-resolution-cpu}
steps=${STEPS:-1500}
diffma() { python3 -m diffma_cli "$@"; }
mkdir -p "$work"
[ -d "$work/synthrad" ] || diffma synth "$work/synthrad" --anatomy pelvis --cases 8 --seed 0 --workers 2
for size in 224 512; do
  [ -d "$work/data$size" ] || diffma prepare "$work/synthrad/Task1" -o "$work/data$size" --anatomy pelvis \
    --split 0.5,0.25,0.25 --image-size "$size" --workers 2
done
grep -q '"finished": true' "$work/vae/run.json" 2> /dev/null ||
  diffma train-vae "$work/data224" -o "$work/vae" --recipe demo --steps "${VAE_STEPS:-400}" --device cpu --overwrite
for size in 224 512; do
  at_size=(--recipe demo --set data.image_size="$size" --set encoders.vae="$work/vae")
  [ -f "$work/embedder$size/embedder.safetensors" ] ||
    diffma train-embedder "$work/data$size" -o "$work/embedder$size" "${at_size[@]}" --device cpu --overwrite
  python3 benchmarks/table2.py "$work/data$size" "$work/synthrad/Task1" -o "$work/table$size" "${at_size[@]}" \
    --diffma-model DiffMa-S/4 --embedder "$work/embedder$size" --steps "$steps" --backbones diffma-latent-tokens \
    --device cpu --eval-workers 2 --quiet
  python3 benchmarks/quality_montage.py "$work/table$size" "$work/synthrad/Task1" -o "$work/table$size/montage.png" \
    --cases 2
done
