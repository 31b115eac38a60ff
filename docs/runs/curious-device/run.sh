#!/usr/bin/env bash
# The curious-device attack on real data (issue 14): one FedShare run per dataset at its tuned
# config (seed 0), attacked from what its first sharing device received, and with the
# pre-issue-14 negatives drawn on the same run. Run from the repository root; one run at a time.
set -euo pipefail
out=docs/runs/curious-device
for data in ${DATASETS:-ml-100k lastfm}; do
  python -m fedshare.attack device experiment=fedshare data=$data data.root=../shared/datasets seed=0 \
    overlay=docs/runs/results/tune/$data-fedshare/best.yaml logger=none trainer.enable_progress_bar=false \
    paths.output_dir=$out/$data 2>&1 | tee $out/$data.log
done
