#!/usr/bin/env bash
# Runs the upstream Kubernetes e2e tests (the e2e.test binary of k8s.io/kubernetes, the
# same release as the lab) against podnet on a 3-node real-node lab: containerd,
# kubelet and kube-proxy on every node, podnet installed from deploy/, CoreDNS.
#
#   scripts/e2e.sh [--datapath ebpf|bridge] [--policy-datapath ebpf|nftables]
#                  [--proxy-mode nftables|iptables] [--ip-family ipv4|dual]
#                  [--underlay-family ipv4|ipv6]
#                  [--suite NAME]... [--focus REGEX] [--keep]
#
# The datapaths default as podnet's do: the eBPF fast path with the eBPF policy
# datapath; --policy-datapath nftables alone brings --datapath bridge, and
# --datapath bridge alone brings nftables. --underlay-family ipv6 runs the overlay
# between the nodes' IPv6 addresses (each kubelet then reports both node addresses).
#
# Suites (default: all four, and dualstack with --ip-family dual; --focus replaces
# them with one regex of your own):
#   netpol    \[sig-network\] Netpol            (SCTP cases skipped: no SCTP in this kernel)
#   granular  \[sig-network\] Networking Granular Checks: Pods
#   services  \[sig-network\] Services  ... [Conformance]
#   dns       \[sig-network\] DNS ... [Conformance]
#   dualstack \[Feature:IPv6DualStack\]         (--ip-family dual: a dual-stack cluster,
#             both families' pod and Service ranges, kubelets reporting both node IPs)
# Prints passed/failed/skipped per suite; keeps each suite's JUnit report and log in
# $PODNET_E2E_OUT (default /var/tmp/podnet-e2e/<datapaths>-<time>/). Builds what is
# missing first (cached: scripts/kubernetes.sh, scripts/real-nodes.sh --e2e, cargo).
# The lab is removed at the end unless --keep.
#
# Traffic stays in the lab: the tests run inside the lab's fabric namespace, which has
# no route out; CoreDNS forwards nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

datapath=""
policy=""
proxy=nftables
focus=""
family=ipv4
underlay=ipv4
keep=false
suites=()
while [ $# -gt 0 ]; do
  case $1 in
    --datapath) datapath=$2; shift 2 ;;
    --policy-datapath) policy=$2; shift 2 ;;
    --proxy-mode) proxy=$2; shift 2 ;;
    --suite) suites+=("$2"); shift 2 ;;
    --focus) focus=$2; shift 2 ;;
    --ip-family) family=$2; shift 2 ;;
    --underlay-family) underlay=$2; shift 2 ;;
    --keep) keep=true; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "e2e.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$datapath" ]; then
  case $policy in nftables|none) datapath=bridge ;; *) datapath=ebpf ;; esac
fi
if [ -z "$policy" ]; then
  if [ "$datapath" = ebpf ]; then policy=ebpf; else policy=nftables; fi
fi
if [ "$datapath" = ebpf ] && [ "$policy" != ebpf ]; then
  echo "e2e.sh: --datapath ebpf runs with the eBPF policy datapath: drop --policy-datapath $policy, or add --datapath bridge" >&2
  exit 2
fi
case $family in
  ipv4) [ ${#suites[@]} -gt 0 ] || suites=(netpol granular services dns) ;;
  dual) [ ${#suites[@]} -gt 0 ] || suites=(netpol granular services dns dualstack) ;;
  *) echo "e2e.sh: --ip-family is ipv4 or dual (got $family)" >&2; exit 2 ;;
esac

suite_focus() {
  case $1 in
    netpol) echo '\[sig-network\] Netpol' ;;
    granular) echo '\[sig-network\] Networking Granular Checks: Pods' ;;
    services) echo '\[sig-network\] Services.*\[Conformance\]' ;;
    dns) echo '\[sig-network\] DNS.*\[Conformance\]' ;;
    dualstack) echo '\[Feature:IPv6DualStack\]' ;;
    *) echo "e2e.sh: unknown suite $1 (netpol, granular, services, dns, dualstack)" >&2; return 1 ;;
  esac
}
# What no run here can do: SCTP (no SCTP sockets in this kernel), tests that need
# several host interfaces, a cloud, or a reachable internet; [Disruptive] and
# [Flaky] by upstream's own rule.
# An IPv4 cluster skips the IPv6 and dual-stack features; a dual-stack one runs
# [Feature:IPv6DualStack] (an IPv6-only cluster would be needed for Networking-IPv6).
if [ "$family" = dual ]; then
  skip='SCTP|\[Disruptive\]|\[Flaky\]|\[Feature:(Networking-IPv6|SCTPConnectivity)\]'
else
  skip='SCTP|\[Disruptive\]|\[Flaky\]|\[Feature:(Networking-IPv6|IPv6DualStack|SCTPConnectivity)\]'
fi

t0=$(date +%s)
k8s=$(scripts/kubernetes.sh)
nodes=$(scripts/real-nodes.sh --e2e)
cargo build --release --quiet
podnet=target/x86_64-unknown-linux-gnu/release/podnet
echo "e2e.sh: built or found everything in $(($(date +%s) - t0)) s" >&2

lab="e2e-$datapath-$policy"
[ "$family" = ipv4 ] || lab="$lab-$family"
[ "$underlay" = ipv4 ] || lab="$lab-u6"
out=${PODNET_E2E_OUT:-/var/tmp/podnet-e2e/$datapath-$policy-$proxy-$family-$underlay-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
cleanup() {
  if ! $keep; then "$podnet" lab down --name "$lab" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
"$podnet" lab down --name "$lab" >/dev/null 2>&1 || true
t1=$(date +%s)
PODNET_KUBERNETES_BIN=$k8s PODNET_NODES_BIN=$nodes "$podnet" lab up --name "$lab" --kubernetes --kubelet \
  --nodes 3 --pods-per-node 0 --datapath "$datapath" --policy-datapath "$policy" --proxy-mode "$proxy" \
  --ip-family "$family" --underlay-family "$underlay" \
  --output json >"$out/lab.json"
echo "e2e.sh: lab $lab up in $(($(date +%s) - t1)) s" >&2
kubeconfig=$("$podnet" lab kubeconfig --name "$lab")

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
summary="$out/summary.txt"
echo "podnet $commit, $(date -u +%Y-%m-%d), datapath $datapath, policy datapath $policy, kube-proxy $proxy, IP family $family, underlay family $underlay, Kubernetes e2e v1.37.2" >"$summary"
run_suite() { # name regex
  local name=$1 re=$2 dir="$out/$1"
  mkdir -p "$dir"
  local t=$(date +%s)
  # Inside the fabric, where the API server and the nodes' addresses are.
  nsenter --net="/run/netns/$lab-fabric" -- "$nodes/e2e.test" \
    --provider=skeleton --kubeconfig="$kubeconfig" --report-dir="$dir" \
    --ginkgo.focus="$re" --ginkgo.skip="$skip" --ginkgo.no-color --ginkgo.timeout=6h \
    --ginkgo.junit-report="$dir/junit.xml" --dns-domain=cluster.local \
    >"$dir/e2e.log" 2>&1 || true
  python3 - "$dir/junit.xml" "$name" "$(($(date +%s) - t))" <<'EOF' | tee -a "$summary"
import sys, xml.etree.ElementTree as ET
path, name, secs = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    root = ET.parse(path).getroot()
except Exception as e:
    print(f"{name:9} no report ({e}); see {path.rsplit('/',1)[0]}/e2e.log")
    sys.exit(0)
p = f = s = 0
failed = []
for tc in root.iter("testcase"):
    n = tc.get("name", "")
    # The specs themselves; the suite's set-up and report nodes are not tests.
    if not n.startswith("[It] "):
        continue
    n = n[len("[It] "):]
    if tc.find("skipped") is not None:
        s += 1
    elif tc.find("failure") is not None or tc.find("error") is not None:
        f += 1
        failed.append(n)
    else:
        p += 1
print(f"{name:9} passed {p:3}  failed {f:3}  skipped {s:4}  ({secs} s)")
for n in failed:
    print(f"  FAILED {n}")
EOF
}
if [ -n "$focus" ]; then
  run_suite focus "$focus"
else
  for s in "${suites[@]}"; do
    run_suite "$s" "$(suite_focus "$s")"
  done
fi
echo "e2e.sh: done in $(($(date +%s) - t0)) s; reports in $out" >&2
