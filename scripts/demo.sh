#!/usr/bin/env bash
# The main job: build podnet, bring up a 2-node lab (real podnetd agents, a VXLAN
# overlay on a namespace fabric, pods made through podnet-cni), print its status and
# the pod-to-pod connectivity check, trace a packet's path hop by hop, break the
# physical network and let the trace name the broken hop, isolate two tenants with
# NetworkPolicy (probe, explain, trace), then show a pod's forged ARP being dropped. The lab stays up for you to explore; `podnet lab down` removes it.
# As root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
echo "== building podnet (cargo build --release): the first build takes a few minutes; later ones are quick"
cargo build --release
podnet=target/x86_64-unknown-linux-gnu/release/podnet
"$podnet" lab up --nodes 2 --pods-per-node 2 "$@"
echo
echo "== connectivity: every pod to every other pod (TCP), source address as the receiver saw it"
"$podnet" lab check
echo
echo "== the path from p1a (node1) to p2a (node2), read from each node's kernel"
"$podnet" trace p1a p2a --lab lab
echo
echo "== a firewall on the physical network now drops UDP 8472 (podnet lab fault inject vxlan-port-blocked)"
"$podnet" lab fault inject vxlan-port-blocked >/dev/null
"$podnet" trace p1a p2a --lab lab || true
"$podnet" lab fault clear >/dev/null
echo
echo "== NetworkPolicy: two tenants, default deny in tenant-b, tenant-a may call tenant-b/web on port http (examples/tenants.yaml)"
"$podnet" lab apply -f examples/tenants.yaml
"$podnet" lab probe tenant-a/client tenant-b/web --port 80
"$podnet" lab probe tenant-a/client tenant-b/web --port 81 || true
"$podnet" lab probe tenant-a/client tenant-b/db --port 5432 || true
"$podnet" lab probe tenant-b/web tenant-b/db --port 5432
"$podnet" policy explain tenant-a/client tenant-b/db --port 5432 --lab lab
"$podnet" trace tenant-a/client tenant-b/db --port 5432 --lab lab | tail -6 || true
echo
echo "== anti-spoofing: a pod claims its neighbour's IP with a forged ARP reply"
"$podnet" demo
echo
echo "The lab is still up. Try:"
echo "  $podnet lab exec p1a -- ip route"
echo "  $podnet doctor --lab lab"
echo "  $podnet lab probe --matrix --port 80"
echo "  $podnet policy stats --lab lab"
echo "  $podnet lab fault inject missing-fdb && $podnet trace p1a p2a --lab lab"
echo "  $podnet lab down"
