#!/usr/bin/env bash
# Issue 14, item 2: does a small fusion weight help where the staged search settled on its FedMF base?
# FedShare at that base (each dataset's docs/runs/results/tune/<dataset>-fedshare/base.yaml) with
# no alignment (model.lambda_cl=0) and a fixed small beta, or each device's own beta_u (beta_select)
# from a grid that holds small values. Seed 0; validation only (summarize.py reads val/* keys only).
# Usage: bash docs/runs/small-beta/run.sh DATASET [DATASET ...]   (from the repository root)
set -euo pipefail
out=docs/runs/small-beta
for d in "$@"; do
  base=docs/runs/results/tune/$d-fedshare/base.yaml
  for v in b0.05 b0.1 b0.2 select; do
    case $v in
      select) keys=(model.beta=0.1 model.beta_select=true "model.beta_grid=[0.0,0.05,0.1,0.2,0.5,1.0]") ;;
      *) keys=(model.beta=${v#b}) ;;
    esac
    dir=$out/$d/$v/seed0
    [[ -f $dir/metrics.json ]] && { echo "$d $v: done"; continue; }
    rm -rf "$dir"; mkdir -p "$(dirname "$dir")"
    echo "$d $v: $(date -u +%H:%M:%S)"
    python -m fedshare.train experiment=fedshare data=$d data.root=../shared/datasets seed=0 overlay=$base \
      model.lambda_cl=0 "${keys[@]}" paths.output_dir=$dir logger=none trainer.enable_progress_bar=false \
      > "$out/$d/$v/seed0.log" 2>&1
  done
done
