#!/usr/bin/env bash
# The GPU runs behind docs/benchmarks.md (training speed, multi-GPU scaling, scan kernels, 512² rows),
# docs/quality.md (Table 2), docs/consistency.md and docs/convert.md (20 ODE steps vs 250 ancestral steps),
# as one background job on one machine with one or more GPUs; gpu_wait.sh waits for it and collects the files.
# From the repository root, with .gpu-run/ carrying the SimpleITK, diffusers, importlib_metadata, open_clip,
# ftfy and wcwidth wheels, the mamba-ssm sdist (and causal-conv1d's for `conv`) and a build-cuda-ext.sh that
# builds them for the card (see README.md beside this file):
#   setsid nohup bash benchmarks/gpu/gpu_all.sh > /tmp/gpu_all.log 2>&1 < /dev/null &
#   bash benchmarks/gpu/gpu_wait.sh 570            # waits, then packs logs and tables into $OUT
# Knobs (environment):
#   STAGES        which parts run: setup data speed kernels table consistency backbone512 compile conv
#                 backbone512fp32
#                 (default: setup data speed kernels table consistency; `speed` needs two GPUs for its
#                 torchrun half). `kernels` (GPU tests + scan kernels) starts on the last GPU as soon as
#                 mamba-ssm is built, beside the data stage when there are several GPUs. `consistency`,
#                 `backbone512`, `conv` and `compile` run after Table 2's group on GPU 0, 0, 0 and 1 (or
#                 alone without `table`). `conv` also builds causal-conv1d in `setup` (its sdist in .gpu-run;
#                 both builds take about 384 s on 16 cores) and times it against PyTorch's convolution.
#   TABLE_GROUPS  Table 2 rows, one comma-separated group per GPU (GPU i trains group i, one after another)
#   TABLE_BUDGET  the budget option of benchmarks/table2.py (default --steps 1000; e.g. --images 96000)
#   WORK          work folder (default /tmp/diffma-gpu)
# The 2026-11-27 runs on 2 x H100 used the defaults; those on 4 x H100:
#   STAGES="setup data kernels table backbone512 compile" TABLE_BUDGET="--images 96000" \
#   TABLE_GROUPS="diffma-spiral,dit diffma-released,zigma diffma-no-mask,emamba vmamba,vim"
set -uo pipefail
work=${WORK:-/tmp/diffma-gpu}
logs=$work/logs
stages=" ${STAGES:-setup data speed kernels table consistency} "
groups=(${TABLE_GROUPS:-diffma-spiral,diffma-released,diffma-no-mask dit,zigma,vim,vmamba,emamba})
budget=(${TABLE_BUDGET:---steps 1000})
mkdir -p "$logs"
rm -f "$logs/build.done" "$logs/kernels.done" "$logs/ALL_DONE"
mark() { echo "$(date +%T) $*" | tee -a "$logs/progress.txt"; }
want() { [[ $stages == *" $1 "* ]]; }
diffma() { python3 -m diffma_cli "$@"; }
encoders=(--set encoders.offline=true --set encoders.clip=none --set encoders.vae="$work/vae")
export PYTHONPATH=/tmp/site:$(pwd) PYTHONUNBUFFERED=1
gpus=$(nvidia-smi -L | wc -l)
last_gpu=$(( gpus - 1 ))

# One `diffma train` line per run: whole-run and last-window images/s, peak memory.
report_speed() {
  python3 - "$@" <<'PY'
import json, sys
from pathlib import Path
from diffma_cli.train.run_log import read_records
for arg in sys.argv[1:]:
    run = Path(arg); info = json.loads((run / "run.json").read_text())
    records = read_records(run)
    print(run.name, {"images_per_s_last_window": records[-1]["images_per_s"],
                     **{k: info.get(k) for k in ("images_per_second", "peak_gpu_memory_gib", "steps",
                                                 "final_loss")}})
PY
}

# The GPU tests (the model library's reference tests on the fast path) and the scan-kernel timings.
kernels() {
  (export CUDA_VISIBLE_DEVICES=$1
   timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$logs/gpu-tests.txt" 2>&1
   echo "pytest rc=$?" >> "$logs/gpu-tests.txt"
   timeout 200 python3 benchmarks/scan_kernels_gpu.py --json "$logs/scan_kernels.json" \
     > "$logs/scan_kernels.txt" 2>&1)
  mark "gpu tests + scan kernels done on GPU $1: $(tail -1 "$logs/gpu-tests.txt")"
  touch "$logs/kernels.done"
}

# The slice-consistency options at 20 ODE steps on every test case, and the 20-step ODE
# sampler against 250 ancestral steps on two cases, with Table 2's spiral DiffMa-B/2.
consistency() {
  local run=$work/table2/diffma-spiral/run
  [ -d "$run" ] || { mark "consistency skipped: no $run"; return; }
  python3 benchmarks/consistency.py "$work/synthrad/Task1" --model "$run" --data "$work/data" --steps 20 \
    --batch-size 64 --settings independent,shared,correlated-0.9,smooth-1.0,shared+smooth-0.5 \
    --json "$logs/consistency.json" > "$logs/consistency.txt" 2>&1
  mark "consistency rc=$?"
  python3 benchmarks/consistency.py "$work/synthrad/Task1" --model "$run" --data "$work/data" --steps 20 \
    --batch-size 64 --cases 2 --settings independent,ddpm-250 \
    --json "$logs/sampler.json" > "$logs/sampler.txt" 2>&1
  mark "sampler rc=$?"
}

# The grid of four backbones: NAME RESOLUTIONS DTYPES -> $logs/NAME.txt and .json. `backbone512`:
# the 512² rows (1024 tokens) and the baselines after the mixer changes, bf16; `backbone512fp32`: the fp32
# column at 512² (bf16 alone is the `backbone512` stage); rows that run out of memory say so.
backbone_grid() {
  timeout 500 python3 benchmarks/backbone.py \
    --models DiffMa-B/2,DiT-B/2,ZigMa-BL/2,VMamba-BL/2 --batches 8,32,64 --resolutions "$2" \
    --dtypes "$3" --modes train,forward --repeat 10 --json "$logs/$1.json" > "$logs/$1.txt" 2>&1
  mark "$1 rc=$? on GPU $CUDA_VISIBLE_DEVICES"
}
backbone512() { backbone_grid backbone512 224,512 bf16; }
backbone512fp32() { backbone_grid backbone512-fp32 512 fp32; }

# Does causal-conv1d pay? The convolution alone, then DiffMa-B/2 with either convolution, one card.
conv() {
  timeout 200 python3 benchmarks/conv_gpu.py --json "$logs/conv.json" > "$logs/conv.txt" 2>&1
  for backend in torch causal_conv1d; do
    timeout 200 python3 benchmarks/backbone.py --models DiffMa-B/2 --batches 32,64 --resolutions 224,512 \
      --dtypes bf16 --modes train,forward --repeat 10 --conv "$backend" --json "$logs/backbone-conv-$backend.json" \
      > "$logs/backbone-conv-$backend.txt" 2>&1
  done
  mark "conv on GPU $CUDA_VISIBLE_DEVICES: $(grep -c '^| .*causal_conv1d' "$logs/conv.txt") causal_conv1d rows"
}

# `training.compile` inside the whole trainer: the same 150 steps of 32, eager and compiled, one card.
compile_speed() {
  local common=(--recipe brain "${encoders[@]}" --embedder "$work/embedder" --steps 150 --batch-size 32
                --set training.log_every=25 --overwrite)
  diffma train "$work/data" -o "$work/runs/eager" "${common[@]}" > "$logs/train-eager.txt" 2>&1
  diffma train "$work/data" -o "$work/runs/compiled" "${common[@]}" --set training.compile=true \
    > "$logs/train-compiled.txt" 2>&1
  report_speed "$work/runs/eager" "$work/runs/compiled" > "$logs/compile.txt" 2>&1
  mark "compile on GPU $CUDA_VISIBLE_DEVICES: $(tr '\n' ' ' < "$logs/compile.txt")"
}

mark "start on $(nvidia-smi --query-gpu=name --format=csv,noheader | paste -sd,); stages:$stages"
if want setup; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu-run/whl/*.whl
fi
# mamba-ssm builds on the CPUs while the data stage runs (about 170 s on 16 cores); with several GPUs the
# kernel stage follows it on the last GPU while the data stage still holds GPU 0.
early_kernels=$(want kernels && [ "$gpus" -gt 1 ] && echo yes)
(if want setup; then
   bash .gpu-run/build-cuda-ext.sh $(want conv && echo --causal-conv1d) > "$logs/build.txt" 2>&1
   mark "mamba-ssm: $(tail -1 "$logs/build.txt")"
 fi
 touch "$logs/build.done"
 [ -n "$early_kernels" ] && kernels "$last_gpu") &
build=$!
if want data; then
  CUDA_VISIBLE_DEVICES=0 bash benchmarks/gpu/gpu_session.sh data "$work" > "$logs/data.txt" 2>&1 || mark "data FAILED"
  mark "data done"
fi
# Nothing trains before mamba-ssm is built; Table 2's group on the last GPU waits for early kernels itself
# (below), everything else for all of this job.
while [ ! -f "$logs/build.done" ]; do sleep 5; done
if [ -z "$early_kernels" ] || want speed || ! want table; then wait "$build"; fi
[ -z "$early_kernels" ] && want kernels && kernels 0
diffma doctor > "$logs/doctor.txt" 2>&1
mark "doctor rc=$?"

if want speed; then
  # End-to-end `diffma train` on two GPUs (global batch 64 = 32 per GPU), then on one (batch 32).
  train_speed=(--recipe brain "${encoders[@]}" --embedder "$work/embedder" --steps 200
               --set training.log_every=20 --overwrite)
  torchrun --standalone --nproc-per-node 2 -m diffma_cli train "$work/data" -o "$work/runs/speed-2gpu" \
    "${train_speed[@]}" --batch-size 64 > "$logs/train-2gpu.txt" 2>&1
  mark "train 2 GPUs rc=$?"
  CUDA_VISIBLE_DEVICES=0 diffma train "$work/data" -o "$work/runs/speed-1gpu" "${train_speed[@]}" \
    --batch-size 32 > "$logs/train-1gpu.txt" 2>&1
  mark "train 1 GPU rc=$?"
  report_speed "$work/runs/speed-1gpu" "$work/runs/speed-2gpu" > "$logs/speed.txt" 2>&1
  mark "speed: $(tr '\n' ' ' < "$logs/speed.txt")"
fi

if want table; then
  # Table 2: group i of TABLE_GROUPS on GPU i, one plan for all (the same images per row); the
  # extra stages follow their GPU's group.
  table=(python3 benchmarks/table2.py "$work/data" "$work/synthrad/Task1" -o "$work/table2" --recipe brain
         "${encoders[@]}" --set training.global_batch_size=32 --set training.ema_decay=0.997
         --set sampling.batch_size=64 --embedder "$work/embedder" "${budget[@]}" --sampler dpm
         --sample-steps 20 --quiet)
  for gpu in "${!groups[@]}"; do
    (export CUDA_VISIBLE_DEVICES=$gpu
     if [ -n "$early_kernels" ] && [ "$gpu" = "$last_gpu" ]; then
       while [ ! -f "$logs/kernels.done" ]; do sleep 5; done
     fi
     "${table[@]}" --backbones "${groups[$gpu]}" > "$logs/table2-gpu$gpu.txt" 2>&1
     mark "table2 GPU $gpu (${groups[$gpu]}) rc=$?"
     if [ "$gpu" = 0 ]; then
       want consistency && consistency
       want backbone512 && backbone512
       want conv && conv
       want backbone512fp32 && backbone512fp32
     fi
     if [ "$gpu" = $(( gpus > 1 ? 1 : 0 )) ]; then want compile && compile_speed; fi) &
    [ "$gpu" = 0 ] && sleep 30  # the first call writes plan.json before the others read it
  done
  wait
  "${table[@]}" > "$logs/table2-final.txt" 2>&1
  mark "table2 final rc=$?"
else
  export CUDA_VISIBLE_DEVICES=0
  want consistency && consistency
  want backbone512 && backbone512
  want conv && conv
  want backbone512fp32 && backbone512fp32
  want compile && compile_speed
fi
wait
touch "$logs/ALL_DONE"
