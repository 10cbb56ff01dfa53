#!/usr/bin/env bash
# What several samples, the left-right flip (--tta flip) and an ensemble of two runs (--model A --model B)
# add to the quality of a conversion, and what each costs, at the demo's scale (CPU, about half an hour on
# 2 cores): `diffma demo` on 18 phantoms (12 / 3 / 3 patients), a second DiffMa trained like the demo's with
# another seed, then the test CTs converted five ways and scored with `diffma eval`.
# From the repository root:  bash benchmarks/members.sh [WORK]      (resumes: finished stages are skipped)
# Writes WORK/members/<variant>/ (predictions, metrics.json, seconds.txt) and prints a table.
set -euo pipefail
work=${1:-/tmp/diffma-members}
diffma() { python3 -m diffma_cli "$@"; }
demo=$work/demo src=$work/demo/synthrad/Task1/brain
[ -f "$demo/eval/metrics.json" ] || diffma demo -o "$demo" --cases 18 --overwrite
grep -q '"finished": true' "$work/seed1/run.json" 2> /dev/null ||
  diffma train "$demo/data" -o "$work/seed1" --recipe demo --embedder "$demo/embedder" \
    --set encoders.vae="$demo/vae" --set training.seed=1 --overwrite
cases=$(python3 -c "import json, sys; print(*json.load(open(sys.argv[1]))['splits']['test'])" \
        "$demo/data/manifest.json")

convert_all() {  # variant, convert options...: every test CT, seconds per volume (model loading included)
  local variant=$1; shift
  local out=$work/members/$variant
  [ -f "$out/metrics.json" ] && return
  mkdir -p "$out/predictions"
  local began=$SECONDS
  for case in $cases; do
    diffma convert "$src/$case/ct.nii.gz" -o "$out/predictions/$case.nii.gz" --body-mask "$src/$case/mask.nii.gz" \
      --device cpu --smooth-z 0 --overwrite "$@" > /dev/null
  done
  echo "$(( SECONDS - began )) $(wc -w <<< "$cases")" > "$out/seconds.txt"
  diffma eval "$out/predictions" "$src" -o "$out/metrics.json" --percentiles-from "$demo/run" --overwrite > /dev/null
}
convert_all one --model "$demo/run"
convert_all seed1 --model "$work/seed1"
convert_all samples2 --model "$demo/run" --samples 2
convert_all flip --model "$demo/run" --tta flip
convert_all ensemble2 --model "$demo/run" --model "$work/seed1"

python3 - "$work/members" <<'PY'
import json, sys
from pathlib import Path

root = Path(sys.argv[1])
rows = ["one", "seed1", "samples2", "flip", "ensemble2"]
what = {"one": "the demo's run, one sample", "seed1": "a second run (training seed 1), one sample",
        "samples2": "the demo's run, mean of 2 samples", "flip": "the demo's run, --tta flip (2 members)",
        "ensemble2": "both runs, --model A --model B (2 members)"}
print("| conversion | s / volume | MAE | PSNR (dB) | SSIM | ρ |")
print("|---|---|---|---|---|---|")
for row in rows:
    summary = json.loads((root / row / "metrics.json").read_text(encoding="utf-8"))["summary"]
    seconds, count = map(int, (root / row / "seconds.txt").read_text(encoding="utf-8").split())
    cells = [f"{summary[m]['mean']:.{d}f} ± {summary[m]['std']:.{d}f}" for m, d in
             (("mae", 3), ("psnr", 2), ("ssim", 3), ("pearson", 3))]
    print(f"| {what[row]} | {seconds / count:.1f} | " + " | ".join(cells) + " |")
PY
