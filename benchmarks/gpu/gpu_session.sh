#!/usr/bin/env bash
# The GPU runs behind docs/quality.md, docs/consistency.md and the training numbers of docs/benchmarks.md:
# synthetic brain data -> VAE -> embedder -> DiffMa-B/2 -> convert + eval + consistency options.
# Run from the repository root on the GPU machine after `source benchmarks/gpu/device_env.sh`:
#   bash benchmarks/gpu/gpu_session.sh data|speed|train|evaluate [WORK]      (WORK defaults to /tmp/diffma-gpu)
# Everything is seeded; `data` takes about 3 minutes on one H100 with 16 CPU cores.
set -euo pipefail
stage=$1
work=${2:-/tmp/diffma-gpu}
diffma() { python3 -m diffma_cli "$@"; }
# No hub access on the GPU machine: our own VAE (train-vae) and no CLIP (docs/encoders.md).
encoders=(--set encoders.offline=true --set encoders.clip=none)
case "$stage" in
  data)
    diffma synth "$work/synthrad" --anatomy brain --cases 30 --seed 0 --workers 16 --overwrite
    diffma prepare "$work/synthrad/Task1" -o "$work/data" --anatomy brain --split 0.7,0.1,0.2 \
      --workers 16 --overwrite
    diffma train-vae "$work/data" -o "$work/vae" --recipe brain "${encoders[@]}" --steps 2000 \
      --batch-size 32 --overwrite
    diffma train-embedder "$work/data" -o "$work/embedder" --recipe brain "${encoders[@]}" \
      --set encoders.vae="$work/vae" --steps 600 --batch-size 32 --overwrite
    ;;
  speed)  # end-to-end `diffma train` throughput: images/s and peak memory land in run.json
    diffma train "$work/data" -o "$work/runs/speed" --recipe brain "${encoders[@]}" \
      --set encoders.vae="$work/vae" --embedder "$work/embedder" --steps 300 --batch-size 32 --overwrite
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r.get(k) for k in \
      ('images_per_second', 'peak_gpu_memory_gib', 'final_loss', 'steps', 'device')})" "$work/runs/speed/run.json"
    ;;
  train)  # DiffMa-B/2 with the true spiral (the recipe's default for new models)
    diffma train "$work/data" -o "$work/runs/DiffMa-B2-spiral" --recipe brain "${encoders[@]}" \
      --set encoders.vae="$work/vae" --embedder "$work/embedder" --steps "${STEPS:-3000}" \
      --batch-size 32 --overwrite
    ;;
  evaluate)
    run="$work/runs/DiffMa-B2-spiral"
    python3 benchmarks/consistency.py "$work/synthrad/Task1/brain" --model "$run" --data "$work/data" \
      --json "$work/consistency.json"
    ;;
  *) echo "unknown stage $stage (data, speed, train, evaluate)" >&2; exit 2 ;;
esac
