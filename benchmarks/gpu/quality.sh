#!/usr/bin/env bash
# The runs behind docs/quality.md: synthetic brain data (30 cases, seed 0, split 0.7/0.1/0.2) -> our VAE ->
# the CT Vision Embedder -> benchmarks/table2.py over the chosen rows, with the calibration rows, then a
# montage of the predictions. No hub access: our own VAE and no CLIP (docs/encoders.md).
# From the repository root on a CUDA machine, with the project and its dependencies importable:
#   ROWS=diffma-latent,diffma-released IMAGES=48000 bash benchmarks/gpu/quality.sh [WORK]
# Everything is seeded; every stage is skipped when its output exists, so the script resumes.
set -euo pipefail
work=${1:-/tmp/diffma-gpu}
rows=${ROWS:-diffma-latent,diffma-released,diffma-tokens,diffma-latent-tokens,dit,diffma-latent-no-mask,zigma}
images=${IMAGES:-96000}
diffma() { python3 -m diffma_cli "$@"; }
encoders=(--set encoders.offline=true --set encoders.clip=none)
mkdir -p "$work/logs"
rm -f "$work/logs/EXITED"
trap 'echo "exit $?" > "$work/logs/EXITED"' EXIT  # what a waiting collector looks for
step() { echo "$(date +%T) $*" | tee -a "$work/logs/progress.txt"; }
[ -d "$work/synthrad" ] || { step synth; diffma synth "$work/synthrad" --anatomy brain --cases 30 --seed 0 --workers 16; }
[ -d "$work/data" ] || { step prepare; diffma prepare "$work/synthrad/Task1" -o "$work/data" --anatomy brain \
  --split 0.7,0.1,0.2 --workers 16; }
[ -f "$work/vae/run.json" ] && grep -q '"finished": true' "$work/vae/run.json" || { step vae;
  diffma train-vae "$work/data" -o "$work/vae" --recipe brain "${encoders[@]}" --steps 2000 --batch-size 32 --overwrite; }
[ -f "$work/embedder/embedder.safetensors" ] || { step embedder;
  diffma train-embedder "$work/data" -o "$work/embedder" --recipe brain "${encoders[@]}" \
    --set encoders.vae="$work/vae" --steps 600 --batch-size 32 --overwrite; }
step "table2 rows=$rows images=$images"
common=("$work/data" "$work/synthrad/Task1" --recipe brain "${encoders[@]}" --set encoders.vae="$work/vae"
        --sampler dpm --sample-steps 20 --set sampling.batch_size=64 --quiet)
# The calibration rows need no GPU: they run on the CPU cores beside the trainings, in a folder of their own
# (benchmarks/table2.py merges nothing; docs/quality.md's table is both folders' rows).
python3 benchmarks/table2.py "${common[@]}" -o "$work/calibration" --backbones none \
  --calibration constant,other-patient,affine,oracle > "$work/logs/calibration.log" 2>&1 &
python3 benchmarks/table2.py "${common[@]}" -o "$work/table2" --embedder "$work/embedder" --backbones "$rows" \
  --images "$images" --set training.global_batch_size=32 --samples "${SAMPLES:-1}" --calibration vae-ceiling
wait
python3 benchmarks/quality_montage.py "$work/table2" "$work/synthrad/Task1" -o "$work/table2/montage.png" --cases 3
step done
