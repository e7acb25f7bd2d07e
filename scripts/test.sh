#!/usr/bin/env bash
# The whole test suite: unit tests and the privileged integration tests (real
# namespaces, real podnet-cni, podman). As root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
exec cargo test --workspace "$@"
