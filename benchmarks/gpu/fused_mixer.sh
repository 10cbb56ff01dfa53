#!/usr/bin/env bash
# The fused mixer kernels (diffma_cli/models/ops/mixer_triton.py) on one GPU: the GPU tests, then
# DiffMa-B/2's backbone rows on the unfused path and on the fused path with each scan grid and tile of the
# sweep, all in one run on one card, nothing else on it. From the repository root on a CUDA machine, with the
# project, its dependencies and mamba-ssm importable:
#   bash benchmarks/gpu/fused_mixer.sh [WORK]
# Knobs: TILES (space-separated `--fused-tile` values; "default" for the production tile), GRIDS (serial,
# split), BATCHES (32,64), RESOLUTIONS (224,512), MODES (train,forward). Writes WORK/<variant>.{txt,json}
# and WORK/summary.md (images/s per variant and row). Tiles without register spills on sm_90 are in
# docs/benchmarks.md (`python3 benchmarks/triton_registers.py --tile ...` tells on any machine).
set -uo pipefail
work=${1:-/tmp/diffma-fused}
mkdir -p "$work"
tiles=${TILES:-"default num_warps=8,chunk=1,subchunks=8 chunk=1,subchunks=8 num_warps=8,chunk=2,subchunks=4"}
grids=${GRIDS:-"split serial"}
bench() {  # bench NAME ARGS...: one backbone.py run
  local name=$1; shift
  echo "$(date +%T) $name" | tee -a "$work/progress.txt"
  python3 benchmarks/backbone.py --models DiffMa-B/2 --dtypes bf16 --modes "${MODES:-train,forward}" \
    --batches "${BATCHES:-32,64}" --resolutions "${RESOLUTIONS:-224,512}" "$@" --json "$work/$name.json" \
    > "$work/$name.txt" 2>&1 || echo "$name failed (see $work/$name.txt)" | tee -a "$work/progress.txt"
}
python3 -m pytest -q -p no:cacheprovider -m gpu tests/models/test_mixer_triton.py > "$work/gpu-tests.txt" 2>&1
echo "gpu tests: exit $?" | tee -a "$work/progress.txt"
bench unfused --mixer unfused
for grid in $grids; do
  for tile in $tiles; do
    [ "$tile" = default ] && override=() || override=(--fused-tile "$tile")
    bench "fused-$grid-${tile//[=,]/_}" --mixer fused_triton --fused-grid "$grid" "${override[@]}"
  done
done
python3 - "$work" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
rows = {}
for path in sorted(work.glob("*.json")):
    for r in json.loads(path.read_text()):
        rows.setdefault((r["resolution"], r["mode"], r["batch"]), {})[path.stem] = r["img_per_s"]
names = sorted({name for values in rows.values() for name in values}, key=lambda n: (n != "unfused", n))
lines = ["| res | mode | batch | " + " | ".join(names) + " |", "|---" * (3 + len(names)) + "|"]
for (res, mode, batch), values in sorted(rows.items()):
    cells = [f"{values[n]:.0f}" if n in values else "" for n in names]
    lines.append(f"| {res} | {mode} | {batch} | " + " | ".join(cells) + " |")
(work / "summary.md").write_text("images/s, DiffMa-B/2 bf16\n\n" + "\n".join(lines) + "\n")
print((work / "summary.md").read_text())
PY
echo "$(date +%T) done" | tee -a "$work/progress.txt"
