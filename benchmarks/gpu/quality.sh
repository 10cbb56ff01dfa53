#!/usr/bin/env bash
# The runs behind docs/quality.md: synthetic brain data (30 cases, seed 0, split 0.7/0.1/0.2) -> our VAE ->
# the CT Vision Embedder -> benchmarks/table2.py over the chosen rows, with the calibration rows, then a
# montage of the predictions. No hub access: our own VAE and no CLIP (docs/encoders.md).
# From the repository root on a CUDA machine, with the project and its dependencies importable:
#   ROWS=diffma-latent,diffma-released IMAGES=48000 bash benchmarks/gpu/quality.sh [WORK]
# Optional: WAIT_FOR=FILE (wait for it before training a backbone), SAMPLES=K (a mean-of-K row of the first
# row), TTA_OF=ROW,... (rows of ROWS with the left-right flip averaged in; TTA_SAMPLES=K samples of each
# image), ENSEMBLE=A+B (the mean of two trained rows), SIDE_ROWS=ROW,... (rows trained by a second
# process on the same GPU at the same time: the two share the card, so the images/s and seconds per volume
# of the rows trained meanwhile are not single-job speeds; the quality numbers do not depend on it).
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
# WAIT_FOR=FILE: the backbones need a CUDA extension that is still being built; wait for FILE to appear.
while [ -n "${WAIT_FOR:-}" ] && [ ! -e "$WAIT_FOR" ]; do sleep 5; done
step "table2 rows=$rows images=$images"
common=("$work/data" "$work/synthrad/Task1" --recipe brain "${encoders[@]}" --set encoders.vae="$work/vae"
        --sampler dpm --sample-steps 20 --set sampling.batch_size=64 --quiet)
# The calibration rows need no GPU: they run on the CPU cores beside the trainings, in a folder of their own
# (benchmarks/table2.py merges nothing; docs/quality.md's table is both folders' rows).
python3 benchmarks/table2.py "${common[@]}" -o "$work/calibration" --backbones none \
  --calibration constant,other-patient,affine,oracle > "$work/logs/calibration.log" 2>&1 &
budget=(--embedder "$work/embedder" --images "$images" --set training.global_batch_size=32)
variants=(--samples "${SAMPLES:-1}" --tta-of "${TTA_OF:-}" --tta-samples "${TTA_SAMPLES:-1}" --calibration vae-ceiling)
# An ensemble may take a member from the side process: it is scored by the last call, when both are done.
[ -n "${SIDE_ROWS:-}" ] || variants+=(--ensemble "${ENSEMBLE:-}")
python3 benchmarks/table2.py "${common[@]}" -o "$work/table2" "${budget[@]}" --backbones "$rows" "${variants[@]}" &
main=$!
if [ -n "${SIDE_ROWS:-}" ]; then  # once the main process has fixed the shared budget (OUT/plan.json)
  while [ ! -f "$work/table2/plan.json" ] && kill -0 "$main" 2> /dev/null; do sleep 2; done
  python3 benchmarks/table2.py "${common[@]}" -o "$work/table2" "${budget[@]}" --backbones "$SIDE_ROWS" \
    --calibration none > "$work/logs/side.log" 2>&1 &
fi
wait
if [ -n "${SIDE_ROWS:-}" ]; then  # the table of every row, each stage read back from the files it wrote
  python3 benchmarks/table2.py "${common[@]}" -o "$work/table2" "${budget[@]}" --backbones "$rows,$SIDE_ROWS" \
    "${variants[@]}" --ensemble "${ENSEMBLE:-}"
fi
python3 benchmarks/quality_montage.py "$work/table2" "$work/synthrad/Task1" -o "$work/table2/montage.png" --cases 3
step done
