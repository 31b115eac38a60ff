cd "$(dirname "$0")/../../.." && export DGLBACKEND=pytorch WANDB_MODE=offline
for d in ml-1m gowalla; do for r in 1 3; do
  s=$(date +%s.%N)
  python -m fedshare.train experiment=lightgcn_central data=$d data.root=../shared/datasets fed.rounds=$r eval.every=1000 eval.patience=null logger=none trainer.enable_progress_bar=false paths.output_dir=/tmp/lgc-$d-$r > /tmp/lgc-$d-$r.log 2>&1
  e=$(date +%s.%N); echo "$d rounds=$r wall=$(echo "$e - $s" | bc)"
done; done
