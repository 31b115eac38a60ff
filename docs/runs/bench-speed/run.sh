#!/usr/bin/env bash
# The speed figures of issue 12, one benchmark at a time (nothing else running), from the repo root:
#   bash docs/runs/bench-speed/run.sh [NAME ...]   (no NAME: all)
# Each benchmark's whole output goes to docs/runs/bench-speed/NAME.log; its last line is the JSON.
set -uo pipefail
cd "$(dirname "$0")/../../.."
export DGLBACKEND=pytorch WANDB_MODE=offline FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
out=docs/runs/bench-speed
root=data.root=../shared/datasets
declare -A cmd=(
  [round-gowalla-fedshare]="round data=gowalla $root"
  [round-gowalla-fedmf]="round experiment=fedmf data=gowalla $root bench.reference=false"
  [round-beauty-fedshare]="round data=amazon-beauty $root"
  [round-beauty-fedmf]="round experiment=fedmf data=amazon-beauty $root bench.reference=false"
  [round-large-fedshare]="round data=synthetic-large"
  [round-large-fedmf]="round experiment=fedmf data=synthetic-large bench.reference=false"
  [round-ml1m-fedshare]="round data=ml-1m $root"
  [round-ml1m-fedshare-full]="round data=ml-1m $root model.server_steps=20 model.server_batch=4096"
  [round-large-fedshare-full]="round data=synthetic-large model.server_steps=20 model.server_batch=4096"
  [eval-large-fedshare]="eval data=synthetic-large bench.repeats=2"
  [eval-large-fedmf]="eval experiment=fedmf data=synthetic-large bench.repeats=2"
  [flower-ml100k]="flower data=ml-100k nodes=2 $root"
  [round-1m-fedshare]="round data=synthetic-1m bench.repeats=1"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(round-gowalla-fedshare round-gowalla-fedmf round-beauty-fedshare round-beauty-fedmf round-large-fedshare round-large-fedmf round-ml1m-fedshare round-ml1m-fedshare-full eval-large-fedshare eval-large-fedmf flower-ml100k)
for name in "${names[@]}"; do
  echo "[bench-speed] $name: python -m fedshare.bench ${cmd[$name]}"
  { echo "# $(date -u +%FT%TZ) $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"; echo "# python -m fedshare.bench ${cmd[$name]}"; } > "$out/$name.log"
  /usr/bin/time -v -o "$out/$name.time" python -m fedshare.bench ${cmd[$name]} >> "$out/$name.log" 2>&1
  tail -1 "$out/$name.log" | head -c 300; echo
done
