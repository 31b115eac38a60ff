#!/usr/bin/env bash
# Offline device-view check (issue 14, validation only). Each dataset's FedShare seed-0 run at its
# tuned config (the page's row command with another output folder; ML-100K's and Last.fm's are the
# runs of docs/runs/curious-device/, which reproduce the page's rows exactly), then devview.py on
# its best.ckpt. Run from the repository root, one process at a time.
set -euo pipefail
here=docs/runs/device-view-offline
for data in synthetic ml-100k lastfm amazon-beauty; do
  root=""; [ "$data" != synthetic ] && root="data.root=../shared/datasets"
  run=/tmp/device-view-offline/$data
  [ -f "$run/metrics.json" ] || python -m fedshare.train experiment=fedshare data=$data $root seed=0 \
    overlay=docs/runs/results/tune/$data-fedshare/best.yaml logger=none trainer.enable_progress_bar=false \
    paths.output_dir=$run > /dev/null 2>&1
  python $here/devview.py $run 0.12,0.25,0.5,1,2 2>/dev/null > $here/$data.jsonl
done
