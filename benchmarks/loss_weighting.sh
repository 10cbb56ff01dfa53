#!/usr/bin/env bash
# Min-SNR-5 weighting of the ε loss (`diffusion.mse_weighting=min-snr`) against the released uniform
# weighting, at the demo's scale on a CPU (about 45 minutes on 2 cores): 12 small synthetic brain patients
# (6 train / 2 val / 4 test), the demo recipe's VAE and embedder trained once, then benchmarks/table2.py with
# the demo's DiffMa-S/4 for the rows diffma-latent-tokens and diffma-latent-tokens-min-snr, once per training
# seed (0 and 1), each beside its calibration rows. A proxy for the GPU benchmark, not a substitute: a tiny
# model on a small budget (STEPS, default 1500 as in the demo; SEEDS, default "0 1"). Another STEPS
# writes its own WORK/steps<STEPS>-seed<SEED>/ folders beside the default's.
# From the repository root:  bash benchmarks/loss_weighting.sh [WORK]     (resumable)
set -euo pipefail
work=${1:-/tmp/diffma-loss-weighting}
diffma() { python3 -m diffma_cli "$@"; }
mkdir -p "$work"
[ -d "$work/synthrad" ] || diffma synth "$work/synthrad" --anatomy brain --cases 12 --size small --seed 0
[ -d "$work/data" ] || diffma prepare "$work/synthrad/Task1" -o "$work/data" --anatomy brain --split 0.5,0.17,0.33
grep -q '"finished": true' "$work/vae/run.json" 2> /dev/null ||
  diffma train-vae "$work/data" -o "$work/vae" --recipe demo --device cpu --overwrite
grep -q '"finished": true' "$work/embedder/run.json" 2> /dev/null ||
  diffma train-embedder "$work/data" -o "$work/embedder" --recipe demo --set encoders.vae="$work/vae" \
    --device cpu --overwrite
steps=${STEPS:-1500}
for seed in ${SEEDS:-0 1}; do
  out=$work/seed$seed
  [ "$steps" = 1500 ] || out=$work/steps$steps-seed$seed
  python3 benchmarks/table2.py "$work/data" "$work/synthrad/Task1" -o "$out" --recipe demo \
    --diffma-model DiffMa-S/4 --set encoders.vae="$work/vae" --set training.seed=$seed \
    --embedder "$work/embedder" --steps "$steps" \
    --backbones diffma-latent-tokens,diffma-latent-tokens-min-snr --calibration constant,affine,oracle \
    --device cpu --eval-workers 2 --quiet
done
