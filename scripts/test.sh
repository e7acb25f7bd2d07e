#!/usr/bin/env bash
# The whole test suite: unit tests and the privileged integration tests (real
# namespaces, real podnet-cni, podman). As root. Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
# The Kubernetes tests run a real kube-apiserver: built once from Go modules, cached.
PODNET_KUBERNETES_BIN=$(./scripts/kubernetes.sh)
export PODNET_KUBERNETES_BIN
# The real-node test runs containerd, kubelet and kube-proxy: built and imaged once.
PODNET_NODES_BIN=$(./scripts/real-nodes.sh)
export PODNET_NODES_BIN
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# The privileged and external-service tests are features: a plain `cargo test` (any
# user, no etcd) leaves them out; this script is where they are asked for.
features=podnet/privileged-tests,podnet-datastore/etcd-tests
# Formatting and lints are part of the suite: a change that fails them does not land.
cargo fmt --all --check || { echo "tests: cargo fmt --all --check failed: run cargo fmt --all"; exit 1; }
cargo clippy --workspace --all-targets --features "$features" -- -D warnings \
    || { echo "tests: cargo clippy failed (see above): fix the warnings"; exit 1; }
# --no-fail-fast: every test binary runs and is counted, even after a failure.
cargo test --no-fail-fast --workspace --lib --bins --tests --features "$features" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
sum() { { grep -E '^test result: ' "$log" || true; } | sed -E "s/.* ([0-9]+) $1.*/\1/" | awk '{s += $1} END {print s + 0}'; }
passed=$(sum passed)
failed=$(sum failed)
set -e
echo
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then
    # A binary that did not build, or crashed, prints no result line of its own.
    echo "tests: ${passed} passed, cargo exited ${status} (a test binary did not build or crashed; see above)"
else
    echo "tests: ${passed} passed, ${failed} failed"
fi
exit "$status"
