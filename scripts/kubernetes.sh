#!/usr/bin/env bash
# Builds the Kubernetes control plane the lab runs with `podnet lab up --kubernetes`:
# kube-apiserver, kube-controller-manager and kubectl from the k8s.io/kubernetes Go
# module, and etcd from its Go module (Debian's etcd 3.4 is older than this release
# supports). Nothing is downloaded but Go modules; nothing is faked.
#
# The binaries are cached outside the repository in a directory named by version
# (default /var/cache/podnet/kubernetes/v<k8s>-etcd<etcd>; PODNET_KUBERNETES_CACHE
# overrides the parent), so a second run is instant. Prints that directory last.
#
# First run: about 15-25 minutes on 2 cores (the Go compiler builds kube-apiserver's
# ~4000 packages once; kube-controller-manager and kubectl share most of them).
set -euo pipefail

K8S_VERSION=1.37.2
ETCD_VERSION=3.7.0 # the etcd client release k8s.io/kubernetes v1.37.2 requires
cache_parent=${PODNET_KUBERNETES_CACHE:-/var/cache/podnet/kubernetes}
out="$cache_parent/v${K8S_VERSION}-etcd${ETCD_VERSION}"
bins=(etcd kube-apiserver kube-controller-manager kubectl)

complete() {
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
  [ -f "$out/.complete" ]
}
if complete; then
  echo "$out"
  exit 0
fi

if ! command -v go >/dev/null; then
  echo "podnet: no Go toolchain on PATH: the lab's Kubernetes binaries are built from Go modules; install Go >= 1.26 and run $0 again" >&2
  exit 1
fi

. "$(dirname "$0")/lib/k8s-module.sh"
work=$(mktemp -d /tmp/podnet-k8s-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
mkdir -p "$out.partial"

echo "podnet: building Kubernetes v$K8S_VERSION (kube-apiserver, kube-controller-manager, kubectl) into $out" >&2
mkdir -p "$work/k8s"
(
  cd "$work/k8s"
  k8s_module podnet.dev/lab-kubernetes
  go get -tool k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl >&2
  ldflags=$(k8s_ldflags)
  go build -trimpath -ldflags "$ldflags" -o "$out.partial/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
)

echo "podnet: building etcd v$ETCD_VERSION into $out" >&2
mkdir -p "$work/etcd"
(
  cd "$work/etcd"
  go mod init podnet.dev/lab-etcd >/dev/null 2>&1
  go get -tool "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >&2
  go build -trimpath -ldflags "-s -w" -o "$out.partial/etcd" go.etcd.io/etcd/server/v3
)

for b in "${bins[@]}"; do
  [ -x "$out.partial/$b" ] || { echo "podnet: the build finished without $b" >&2; exit 1; }
done
"$out.partial/kube-apiserver" --version >&2
# sed, not head: head would stop reading after one line, and etcd, writing the
# next, would die of SIGPIPE, which pipefail turns into a failed build.
"$out.partial/etcd" --version | sed -n 1p >&2
touch "$out.partial/.complete"
rm -rf "$out"
mv "$out.partial" "$out"
echo "$out"
