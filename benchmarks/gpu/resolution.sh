#!/usr/bin/env bash
# The pelvis at the paper's 224 x 224 and at 512 x 512 (recipes `pelvis` and `pelvis-512`), behind the
# resolution rows of docs/quality.md and docs/benchmarks.md: the same synthetic pelvis patients prepared at
# both sizes; a VAE and a CT Vision Embedder per size, each trained on that size's slices (a VAE trained on
# 224² slices runs at 512², being convolutional, but reconstructs them far worse: docs/quality.md); each
# VAE's reconstruction ceiling is a row of its size's table;
# DiffMa-B/2 (the recipes' latent+tokens) trained on the same number of images at each size and scored by
# benchmarks/table2.py beside the calibration rows. Last, each size's test volumes are converted again with
# nothing else on the card if another job shared it (WAIT_ALONE=FILE, below), for the seconds per volume.
# From the repository root on a CUDA machine, with the project and its dependencies importable:
#   IMAGES=32000 bash benchmarks/gpu/resolution.sh [WORK]
# Knobs: CASES (synthetic patients, default 20), IMAGES (training images per size, default 32000: the brain
# benchmark's DiffMa-B/2 needed about that many to beat its trivial rows clearly; 3 200 did not come close),
# VAE_STEPS (2000), EMBEDDER_STEPS (600), SAMPLE_STEPS (20), WAIT_FOR=FILE (wait for it before training a
# backbone: a CUDA extension being built, another job on the card), DEVICE (auto). Seeded; every stage is
# skipped when its output exists.
set -euo pipefail
work=${1:-/tmp/diffma-pelvis}
images=${IMAGES:-32000}
diffma() { python3 -m diffma_cli "$@"; }
encoders=(--set encoders.offline=true --set encoders.clip=none)
mkdir -p "$work/logs"
rm -f "$work/logs/EXITED"
trap 'echo "exit $?" > "$work/logs/EXITED"' EXIT
step() { echo "$(date +%T) $*" | tee -a "$work/logs/progress.txt"; }
recipe_of() { [ "$1" = 224 ] && echo pelvis || echo pelvis-512; }

[ -d "$work/synthrad" ] || { step synth; diffma synth "$work/synthrad" --anatomy pelvis --cases "${CASES:-20}" \
  --seed 0 --workers 16; }
for size in 224 512; do
  [ -d "$work/data$size" ] || { step "prepare $size"; diffma prepare "$work/synthrad/Task1" -o "$work/data$size" \
    --anatomy pelvis --split 0.7,0.1,0.2 --image-size "$size" --workers 16; }
done
# A VAE per size: one trained on 224² slices reconstructs 512² ones far worse. At 512² a batch of 8 slices
# has about the pixels of 32 at 224² (2.1 M against 1.6 M), so the same steps cost about the same.
for size in 224 512; do
  [ -f "$work/vae$size/run.json" ] && grep -q '"finished": true' "$work/vae$size/run.json" || { step "vae $size";
    diffma train-vae "$work/data$size" -o "$work/vae$size" --recipe "$(recipe_of $size)" "${encoders[@]}" \
      --steps "${VAE_STEPS:-2000}" --batch-size "$([ "$size" = 224 ] && echo 32 || echo 8)" --overwrite \
      --device "${DEVICE:-auto}"; }
  [ -f "$work/embedder$size/embedder.safetensors" ] || { step "embedder $size";
    diffma train-embedder "$work/data$size" -o "$work/embedder$size" --recipe "$(recipe_of $size)" \
      "${encoders[@]}" --set encoders.vae="$work/vae$size" --steps "${EMBEDDER_STEPS:-600}" --batch-size 32 \
      --overwrite --device "${DEVICE:-auto}"; }
done
while [ -n "${WAIT_FOR:-}" ] && [ ! -e "$WAIT_FOR" ]; do sleep 5; done
# The calibration rows other than the VAE ceiling are made from the SynthRAD tree alone and scored on each
# patient's own grid, so they are the same at both sizes: the 512 table starts from copies of the 224 table's
# (table2 skips a row already made and scored), and each table still holds them all, so that its paired
# differences are against its own constant row.
table() {  # table SIZE: the DiffMa row and the calibration rows at one size
  python3 benchmarks/table2.py "$work/data$1" "$work/synthrad/Task1" -o "$work/table$1" --eval-workers 8 \
    --recipe "$(recipe_of "$1")" "${encoders[@]}" --set encoders.vae="$work/vae$1" \
    --set training.global_batch_size=32 --set sampling.batch_size=32 --embedder "$work/embedder$1" \
    --images "$images" --backbones diffma-latent-tokens --sampler dpm --sample-steps "${SAMPLE_STEPS:-20}" \
    --device "${DEVICE:-auto}" --quiet
}
step "table 224 images=$images"; table 224 > "$work/logs/table224.log" 2>&1
mkdir -p "$work/table512"
for key in constant other-patient affine oracle; do
  [ -e "$work/table512/$key" ] || cp -r "$work/table224/$key" "$work/table512/$key"
done
step "table 512 images=$images"; table 512 > "$work/logs/table512.log" 2>&1
# With WAIT_ALONE=FILE (another job shared the card while the tables ran): once FILE appears, convert the
# test volumes again for the seconds per volume alone on the card (the same seeds: the same volumes).
if [ -n "${WAIT_ALONE:-}" ]; then
  while [ ! -e "$WAIT_ALONE" ]; do sleep 5; done
  for size in 224 512; do
    step "alone $size"
    rm -f "$work/table$size/diffma-latent-tokens/convert.json" "$work/table$size/diffma-latent-tokens/metrics.json"
    table "$size" > "$work/logs/alone$size.log" 2>&1
  done
fi
step done
