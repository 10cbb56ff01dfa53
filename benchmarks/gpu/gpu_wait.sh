#!/usr/bin/env bash
# Waits up to SECONDS for benchmarks/gpu/gpu_all.sh to finish, then packs what it has written so far into $OUT
# (logs, Table 2 files, consistency rows); safe to call again while the job goes on.
work=${WORK:-/tmp/diffma-gpu}
deadline=$(( $(date +%s) + ${1:-570} ))
while [ ! -f "$work/logs/ALL_DONE" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 5; done
cat "$work/logs/progress.txt" 2>/dev/null
[ -f "$work/table2/table.md" ] && cat "$work/table2/table.md"
cd "$work" 2>/dev/null || exit 0
find logs table2 runs -maxdepth 3 \( -name '*.txt' -o -name '*.json' -o -name '*.md' -o -name '*.jsonl' \
  -o -name '*.csv' -o -name '*.yaml' \) -size -4M 2>/dev/null | tar czf "$OUT/results.tgz" -T -
cp /tmp/gpu_all.log "$OUT/gpu_all.log" 2>/dev/null
ls -la "$OUT"
