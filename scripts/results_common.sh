# Shared preamble of scripts/results*.sh (sourced, not run): strict mode, the repository root as the
# working folder, docs/results/ as the output folder, run NAME CMD... and $m (melplan from this tree).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=docs/results
mkdir -p "$out"
run() {  # run NAME CMD...: print the command, then its output, into $out/NAME.txt
  local name=$1; shift
  { echo "\$ $*"; "$@"; } > "$out/$name.txt" 2>&1
  echo "wrote $out/$name.txt"
}
m="python3 -m melplan"
