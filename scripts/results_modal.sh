#!/usr/bin/env bash
# Regenerate the audio and text numbers of docs/results.md (section 9) into docs/results/modal-*.txt.
#   bash scripts/results_modal.sh      (about a minute; needs no training)
# The catalogs themselves come from:
#   melplan sweep sweeps/fsdd.yaml; melplan sweep sweeps/fsdd-heldout.yaml; melplan sweep sweeps/trec.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/results
mkdir -p "$out"
run() {  # run NAME CMD...: print the command, then its output, into $out/NAME.txt
  local name=$1; shift
  { echo "\$ $*"; "$@"; } > "$out/$name.txt" 2>&1
  echo "wrote $out/$name.txt"
}
m="python3 -m melplan"
for c in fsdd fsdd-heldout trec; do
  run "modal-$c-list" $m catalog list --catalog "catalog/$c"
  run "modal-$c-report" $m catalog report --catalog "catalog/$c"
  run "modal-$c-plan-cluster-4" $m plan --servers examples/cluster-4.yaml --catalog "catalog/$c"
done
