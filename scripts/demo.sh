#!/usr/bin/env bash
# The main job: build podnet and run the single-node demo (two pods through the real
# podnet-cni, talking without NAT, and a forged ARP reply dropped). As root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --release --quiet
exec target/x86_64-unknown-linux-gnu/release/podnet demo "$@"
