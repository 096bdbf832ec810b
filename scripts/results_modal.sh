#!/usr/bin/env bash
# Regenerate the audio and text numbers of docs/results.md (section 9) into docs/results/modal-*.txt.
#   bash scripts/results_modal.sh      (about a minute; needs no training)
# The catalogs themselves come from:
#   melplan sweep sweeps/fsdd.yaml; melplan sweep sweeps/fsdd-heldout.yaml; melplan sweep sweeps/trec.yaml
. "$(dirname "$0")/results_common.sh"
for c in fsdd fsdd-heldout trec; do
  run "modal-$c-list" $m catalog list --catalog "catalog/$c"
  run "modal-$c-report" $m catalog report --catalog "catalog/$c"
  run "modal-$c-plan-cluster-4" $m plan --servers examples/cluster-4.yaml --catalog "catalog/$c"
done
