#!/bin/sh
# Rebuild the Fashion-MNIST catalog (into catalog/fashion-mnist, see sweeps/fashion-mnist.yaml) in the background: two workers (shards of sweeps/fashion-mnist.yaml),
# one thread each, lowest priority, per-epoch checkpoints under runs/checkpoints. Each family is
# written to the catalog as soon as it finishes; rerunning this script resumes every interrupted
# family from its last finished epoch and skips finished ones (same spec digest).
#   sh scripts/rebuild-catalog.sh            # from the repository root
# Code runs from a snapshot (runs/snapshot) so that editing the tree does not change a running job.
set -eu
PY=${PYTHON:-python}
mkdir -p runs/logs runs/snapshot
rm -rf runs/snapshot/melplan && cp -r melplan runs/snapshot/melplan
for k in 0 1; do
  PYTHONPATH=$PWD/runs/snapshot nohup nice -n 19 "$PY" -m melplan sweep sweeps/fashion-mnist.yaml \
    --shard "$k/2" --threads 1 --quiet --checkpoint-dir runs/checkpoints >> "runs/logs/shard$k.log" 2>&1 &
  echo "shard $k/2: pid $! (log runs/logs/shard$k.log)"
done
