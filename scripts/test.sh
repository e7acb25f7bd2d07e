#!/usr/bin/env bash
# The whole test suite: unit tests and the privileged integration tests (real
# namespaces, real podnet-cni, podman). As root. Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
sum() { grep -E '^test result: ' "$log" | sed -E "s/.* ([0-9]+) $1.*/\1/" | awk '{s += $1} END {print s + 0}'; }
passed=$(sum passed)
failed=$(sum failed)
echo
echo "tests: ${passed:-0} passed, ${failed:-0} failed"
exit "$status"
