#!/usr/bin/env bash
# Waits up to SECONDS (default 560) for benchmarks/gpu/quality.sh to exit, then packs what it has written so
# far (logs, the table, per-row metrics and run records, the montage) into $OUT; safe to call again.
work=${WORK:-/tmp/diffma-gpu}
deadline=$(( $(date +%s) + ${1:-560} ))
while [ ! -f "$work/logs/EXITED" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 10; done
cat "$work/logs/progress.txt" "$work/logs/EXITED" 2>/dev/null
[ -f "$work/table2/table.md" ] && cat "$work/table2/table.md"
cd "$work" 2>/dev/null || exit 0
find logs table2 calibration vae embedder -maxdepth 3 \( -name '*.txt' -o -name '*.json' -o -name '*.md' -o -name '*.jsonl' \
  -o -name '*.csv' -o -name '*.yaml' -o -name '*.png' \) -size -4M 2>/dev/null | tar czf "$OUT/results.tgz" -T -
cp /tmp/quality.log "$OUT/quality.log" 2>/dev/null
tail -c 3000 /tmp/quality.log
