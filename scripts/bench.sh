#!/usr/bin/env bash
# CNI benchmark: podnet-cni against the reference bridge + host-local plugins, in the
# same run. Arguments go to `podnet bench cni` (try --help). As root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --release --quiet
exec target/x86_64-unknown-linux-gnu/release/podnet bench cni "$@"
