#!/usr/bin/env bash
# The GPU session behind docs/benchmarks.md (training speed, multi-GPU scaling, scan kernels, 512² rows),
# docs/quality.md (Table 2), docs/consistency.md and docs/convert.md (20 ODE steps vs 250 ancestral steps),
# as one background job on one machine with one or more GPUs; the device tool's calls only wait and collect.
# From the repository root, with .gpu-run/ carrying the SimpleITK, diffusers, importlib_metadata, open_clip,
# ftfy and wcwidth wheels, the mamba-ssm sdist and ../shared/device/build-cuda-ext.sh:
#   setsid nohup bash benchmarks/gpu_all.sh > /tmp/gpu_all.log 2>&1 < /dev/null &
#   bash benchmarks/gpu_wait.sh 570            # waits, then packs logs and tables into $OUT
# Knobs (environment):
#   STAGES        which parts run, in this order: setup data speed kernels table backbone512
#                 (default: setup data speed kernels table; `speed` needs two GPUs for its torchrun half)
#   TABLE_GROUPS  Table 2 rows, one comma-separated group per GPU (GPU i trains group i, one after another);
#                 the first group's GPU then runs the consistency and sampler comparisons on diffma-spiral
#   TABLE_BUDGET  the budget option of benchmarks/table2.py (default --steps 1000; e.g. --images 96000)
#   WORK          work folder (default /tmp/diffma-gpu)
# The 2026-11-27 session (2 x H100) ran the defaults. For four GPUs:
#   STAGES="setup data table backbone512" TABLE_BUDGET="--images 96000" TABLE_GROUPS="diffma-spiral,dit \
#   diffma-released,zigma diffma-no-mask,emamba vim,vmamba"
set -uo pipefail
work=${WORK:-/tmp/diffma-gpu}
logs=$work/logs
stages=" ${STAGES:-setup data speed kernels table} "
groups=(${TABLE_GROUPS:-diffma-spiral,diffma-released,diffma-no-mask dit,zigma,vim,vmamba,emamba})
budget=(${TABLE_BUDGET:---steps 1000})
mkdir -p "$logs"
mark() { echo "$(date +%T) $*" | tee -a "$logs/progress.txt"; }
want() { [[ $stages == *" $1 "* ]]; }
diffma() { python3 -m diffma_cli "$@"; }
encoders=(--set encoders.offline=true --set encoders.clip=none --set encoders.vae="$work/vae")
export PYTHONPATH=/tmp/site:$(pwd) PYTHONUNBUFFERED=1

mark "start on $(nvidia-smi --query-gpu=name --format=csv,noheader | paste -sd,); stages:$stages"
build=""
if want setup; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu-run/whl/*.whl
  # mamba-ssm builds on the CPUs while the data stage runs (about 170 s on 16 cores).
  bash .gpu-run/build-cuda-ext.sh > "$logs/build.txt" 2>&1 &
  build=$!
fi
if want data; then
  CUDA_VISIBLE_DEVICES=0 bash benchmarks/gpu_session.sh data "$work" > "$logs/data.txt" 2>&1 || mark "data FAILED"
  mark "data done"
fi
if [ -n "$build" ]; then
  wait "$build"
  mark "mamba-ssm: $(tail -1 "$logs/build.txt")"
fi
diffma doctor > "$logs/doctor.txt" 2>&1
mark "doctor rc=$?"

if want speed; then
  # End-to-end `diffma train` (issue 4) on two GPUs (global batch 64 = 32 per GPU) ...
  train_speed=(--recipe brain "${encoders[@]}" --embedder "$work/embedder" --steps 200
               --set training.log_every=20 --overwrite)
  torchrun --standalone --nproc-per-node 2 -m diffma_cli train "$work/data" -o "$work/runs/speed-2gpu" \
    "${train_speed[@]}" --batch-size 64 > "$logs/train-2gpu.txt" 2>&1
  mark "train 2 GPUs rc=$?"
  # ... and on one (batch 32), while the other GPU runs the kernel stage if asked.
  CUDA_VISIBLE_DEVICES=0 diffma train "$work/data" -o "$work/runs/speed-1gpu" "${train_speed[@]}" \
    --batch-size 32 > "$logs/train-1gpu.txt" 2>&1 &
  one=$!
fi
if want kernels; then
  (export CUDA_VISIBLE_DEVICES=$(( $(nvidia-smi -L | wc -l) > 1 ? 1 : 0 ))
   timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$logs/gpu-tests.txt" 2>&1
   echo "pytest rc=$?" >> "$logs/gpu-tests.txt"
   timeout 200 python3 benchmarks/scan_kernels_gpu.py --json "$logs/scan_kernels.json" \
     > "$logs/scan_kernels.txt" 2>&1)
  mark "gpu tests + scan kernels done: $(tail -1 "$logs/gpu-tests.txt")"
fi
if want speed; then
  wait "$one"
  mark "train 1 GPU rc=$?"
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
  mark "speed: $(tr '\n' ' ' < "$logs/speed.txt")"
fi

if want table; then
  # Table 2 (issue 8): group i of TABLE_GROUPS on GPU i, one plan for all (the same images per row).
  table=(python3 benchmarks/table2.py "$work/data" "$work/synthrad/Task1" -o "$work/table2" --recipe brain
         "${encoders[@]}" --set training.global_batch_size=32 --set training.ema_decay=0.997
         --set sampling.batch_size=64 --embedder "$work/embedder" "${budget[@]}" --sampler dpm
         --sample-steps 20 --quiet)
  for gpu in "${!groups[@]}"; do
    (export CUDA_VISIBLE_DEVICES=$gpu
     "${table[@]}" --backbones "${groups[$gpu]}" > "$logs/table2-gpu$gpu.txt" 2>&1
     mark "table2 GPU $gpu (${groups[$gpu]}) rc=$?"
     if [ "$gpu" = 0 ] && [ -d "$work/table2/diffma-spiral/run" ]; then
       run=$work/table2/diffma-spiral/run
       # Slice-consistency options (issue 10) at 20 ODE steps, every test case ...
       python3 benchmarks/consistency.py "$work/synthrad/Task1" --model "$run" --data "$work/data" --steps 20 \
         --batch-size 64 --settings independent,shared,correlated-0.9,smooth-1.0,shared+smooth-0.5 \
         --json "$logs/consistency.json" > "$logs/consistency.txt" 2>&1
       mark "consistency rc=$?"
       # ... and the 20-step ODE sampler against 250 ancestral steps (issue 5), two cases.
       python3 benchmarks/consistency.py "$work/synthrad/Task1" --model "$run" --data "$work/data" --steps 20 \
         --batch-size 64 --cases 2 --settings independent,ddpm-250 \
         --json "$logs/sampler.json" > "$logs/sampler.txt" 2>&1
       mark "sampler rc=$?"
     fi) &
    [ "$gpu" = 0 ] && sleep 30  # the first call writes plan.json before the others read it
  done
  wait
  "${table[@]}" > "$logs/table2-final.txt" 2>&1
  mark "table2 final rc=$?"
fi

if want backbone512; then
  # Issue 7's 512² rows (1024 tokens) and the baselines after the mixer changes, one card, nothing beside it.
  CUDA_VISIBLE_DEVICES=0 timeout 400 python3 benchmarks/backbone.py \
    --models DiffMa-B/2,DiT-B/2,ZigMa-BL/2,VMamba-BL/2 --batches 8,32,64 --resolutions 224,512 \
    --dtypes bf16 --modes train,forward --repeat 10 --json "$logs/backbone512.json" \
    > "$logs/backbone512.txt" 2>&1
  mark "backbone 512 rc=$?"
fi
touch "$logs/ALL_DONE"
