#!/usr/bin/env bash
# Regenerate every number and picture quoted in docs/results.md into docs/results/.
#   bash scripts/results.sh            (about 5 minutes on a 2-core machine; needs no training)
#   BASELINE=DIR: a checkout of f93844b (git worktree add DIR f93844b) for the side-by-side scale table
# The catalog itself is reproduced by `melplan sweep sweeps/fashion-mnist.yaml` (hours on CPU).
. "$(dirname "$0")/results_common.sh"
run catalog-list      $m catalog list --catalog catalog/fashion-mnist
run catalog-report    $m catalog report --catalog catalog/fashion-mnist
run pareto            $m pareto --catalog catalog/fashion-mnist --plot $out/front.png --force
run pareto-pick       $m pareto --catalog catalog/fashion-mnist --pick "params<=0.4*reference" --prefer acc_all_up
run plan-cluster-4    $m plan --servers examples/cluster-4.yaml --catalog catalog/fashion-mnist --out $out/plan-cluster-4.json --force
run plan-edge-site-12 $m plan --servers examples/edge-site-12.yaml --catalog catalog/fashion-mnist --out $out/plan-edge-site-12.json --force
run plan-worst-case   $m plan --servers examples/edge-site-12.yaml --catalog catalog/fashion-mnist --objective worst-case --max-failures 1
run simulate-cluster-4  $m simulate --plan $out/plan-cluster-4.json --servers examples/cluster-4.yaml --catalog catalog/fashion-mnist --hours 8760 --seed 0 --plot $out/simulate-cluster-4.png --force
run simulate-edge-site-12 $m simulate --plan $out/plan-edge-site-12.json --servers examples/edge-site-12.yaml --catalog catalog/fashion-mnist --hours 8760 --seed 0 --plot $out/simulate-edge-site-12.png --force
run examples-network  python3 scripts/examples_network.py
run bench-plan-scale  python3 benchmarks/plan_scale.py --baseline "${BASELINE:-/tmp/melplan-f93844b}"
run bench-selector    python3 benchmarks/selector.py --replan
run bench-train-step  python3 benchmarks/train_step.py --base efficientnet_lite0 --blocks 5,6 --output-stride 16 --repeats 21
