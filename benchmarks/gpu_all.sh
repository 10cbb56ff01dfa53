#!/usr/bin/env bash
# The whole GPU session behind docs/benchmarks.md (training speed, 2-GPU scaling, scan kernels),
# docs/quality.md (Table 2), docs/consistency.md and docs/convert.md (20-step ODE vs 250-step ancestral),
# on one machine with two GPUs, as one background job (the device tool's calls only wait for it and collect).
# From the repository root, with .gpu-run/ carrying the SimpleITK, diffusers and importlib_metadata wheels,
# the mamba-ssm sdist and ../shared/device/build-cuda-ext.sh:
#   setsid nohup bash benchmarks/gpu_all.sh > /tmp/gpu_all.log 2>&1 < /dev/null &
#   bash benchmarks/gpu_wait.sh 570            # waits, then packs logs and tables into $OUT
# Budget knobs: TABLE_STEPS (optimiser steps of 32 images per Table 2 backbone), WORK.
set -uo pipefail
work=${WORK:-/tmp/diffma-gpu}
logs=$work/logs
steps=${TABLE_STEPS:-1000}
mkdir -p "$logs"
mark() { echo "$(date +%T) $*" | tee -a "$logs/progress.txt"; }
diffma() { python3 -m diffma_cli "$@"; }
encoders=(--set encoders.offline=true --set encoders.clip=none --set encoders.vae="$work/vae")

mark "start on $(nvidia-smi --query-gpu=name --format=csv,noheader | paste -sd,)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu-run/whl/*.whl
export PYTHONPATH=/tmp/site:$(pwd) PYTHONUNBUFFERED=1
# mamba-ssm builds on the CPUs while the data stage runs (about 170 s on 16 cores).
bash .gpu-run/build-cuda-ext.sh > "$logs/build.txt" 2>&1 &
build=$!
CUDA_VISIBLE_DEVICES=0 bash benchmarks/gpu_session.sh data "$work" > "$logs/data.txt" 2>&1 || mark "data FAILED"
mark "data done"
wait $build
mark "mamba-ssm: $(tail -1 "$logs/build.txt")"
diffma doctor > "$logs/doctor.txt" 2>&1
mark "doctor rc=$?"

# End-to-end `diffma train` (issue 4) on two GPUs (global batch 64 = 32 per GPU) ...
train_speed=(--recipe brain "${encoders[@]}" --embedder "$work/embedder" --steps 200 --set training.log_every=20
             --overwrite)
torchrun --standalone --nproc-per-node 2 -m diffma_cli train "$work/data" -o "$work/runs/speed-2gpu" \
  "${train_speed[@]}" --batch-size 64 > "$logs/train-2gpu.txt" 2>&1
mark "train 2 GPUs rc=$?"
# ... and on one (batch 32), while the other GPU runs the GPU tests and the scan-kernel benchmark.
CUDA_VISIBLE_DEVICES=0 diffma train "$work/data" -o "$work/runs/speed-1gpu" "${train_speed[@]}" \
  --batch-size 32 > "$logs/train-1gpu.txt" 2>&1 &
one=$!
(export CUDA_VISIBLE_DEVICES=1
 timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$logs/gpu-tests.txt" 2>&1
 echo "pytest rc=$?" >> "$logs/gpu-tests.txt"
 timeout 200 python3 benchmarks/scan_kernels_gpu.py --json "$logs/scan_kernels.json" > "$logs/scan_kernels.txt" 2>&1)
wait $one
mark "train 1 GPU rc=$?; gpu tests + scan kernels done"
for run in speed-1gpu speed-2gpu; do
  python3 - "$work/runs/$run" >> "$logs/speed.txt" 2>&1 <<'PY'
import json, sys
from pathlib import Path
from diffma_cli.train.run_log import read_records
run = Path(sys.argv[1]); info = json.loads((run / "run.json").read_text())
records = read_records(run)
print(run.name, {"images_per_s_last_window": records[-1]["images_per_s"],
                 **{k: info.get(k) for k in ("images_per_second", "peak_gpu_memory_gib", "steps", "final_loss")}})
PY
done
mark "speed: $(cat "$logs/speed.txt" | tr '\n' ' ')"

# Table 2 (issue 8): the DiffMa variants on GPU 0, the baselines on GPU 1, one plan (same images each).
table=(python3 benchmarks/table2.py "$work/data" "$work/synthrad/Task1" -o "$work/table2" --recipe brain
       "${encoders[@]}" --set training.global_batch_size=32 --set training.ema_decay=0.997
       --set sampling.batch_size=64 --embedder "$work/embedder" --steps "$steps" --sampler dpm
       --sample-steps 20 --quiet)
(export CUDA_VISIBLE_DEVICES=0
 "${table[@]}" --backbones diffma-spiral,diffma-released,diffma-no-mask > "$logs/table2-gpu0.txt" 2>&1
 mark "table2 GPU 0 rc=$?"
 run=$work/table2/diffma-spiral/run
 # Slice consistency options (issue 10) at 20 ODE steps, every test case ...
 python3 benchmarks/consistency.py "$work/synthrad/Task1" --model "$run" --data "$work/data" --steps 20 \
   --batch-size 64 --settings independent,shared,correlated-0.9,smooth-1.0,shared+smooth-0.5 \
   --json "$logs/consistency.json" > "$logs/consistency.txt" 2>&1
 mark "consistency rc=$?"
 # ... and the 20-step ODE sampler against 250 ancestral steps (issue 5), two cases.
 python3 benchmarks/consistency.py "$work/synthrad/Task1" --model "$run" --data "$work/data" --steps 20 \
   --batch-size 64 --cases 2 --settings independent,ddpm-250 \
   --json "$logs/sampler.json" > "$logs/sampler.txt" 2>&1
 mark "sampler rc=$?") &
gpu0=$!
sleep 30  # GPU 0's call writes plan.json first
(export CUDA_VISIBLE_DEVICES=1
 "${table[@]}" --backbones dit,zigma,vim,vmamba,emamba > "$logs/table2-gpu1.txt" 2>&1
 mark "table2 GPU 1 rc=$?") &
wait
"${table[@]}" > "$logs/table2-final.txt" 2>&1
mark "table2 final rc=$?"
touch "$logs/ALL_DONE"
