#!/usr/bin/env bash
# The main job: build podnet, bring up a 2-node lab (real podnetd agents, a VXLAN
# overlay on a namespace fabric, pods made through podnet-cni), print its status and
# the pod-to-pod connectivity check, then show a pod's forged ARP being dropped.
# The lab stays up for you to explore; `podnet lab down` removes it. As root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --release --quiet
podnet=target/x86_64-unknown-linux-gnu/release/podnet
"$podnet" lab up --nodes 2 --pods-per-node 2 "$@"
echo
echo "== connectivity: every pod to every other pod (TCP), source address as the receiver saw it"
"$podnet" lab check
echo
echo "== anti-spoofing: a pod claims its neighbour's IP with a forged ARP reply"
"$podnet" demo
echo
echo "The lab is still up. Try:"
echo "  $podnet lab exec p1a -- ip route"
echo "  $podnet lab status --output json"
echo "  $podnet lab down"
