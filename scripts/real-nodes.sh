#!/usr/bin/env bash
# Builds what a real lab node (`podnet lab up --kubernetes --kubelet`) runs besides
# podnet, from Go modules and Debian packages (nothing else is downloaded, nothing is
# faked):
#   - kubelet, kube-proxy, kube-scheduler and agnhost from the same k8s.io/kubernetes
#     release and replace lines as scripts/kubernetes.sh (with --e2e also the upstream
#     e2e test binary, e2e.test, for scripts/e2e.sh);
#   - containerd, containerd-shim-runc-v2 and ctr from github.com/containerd/containerd/v2
#     (Kubernetes 1.37 needs containerd 2.3+; Debian's 1.6 is unsupported);
#   - CoreDNS from github.com/coredns/coredns;
#   - the reference CNI plugin portmap from github.com/containernetworking/plugins
#     (static), which podnet's image carries for the conflist in deploy/ (into cni/,
#     with the version in cni/VERSION);
#   - pause, from the pause.c the k8s.io/kubernetes module carries, linked statically;
#   - the images every node imports (no registry is reachable; the kubelet and the e2e
#     tests pull IfNotPresent, so each carries the exact upstream name): pause, agnhost
#     and glibc-dns-testing and busybox (on a small Debian root filesystem made with
#     mmdebstrap: sh, curl, nc, dig, ip…), CoreDNS, and the Debian base podnet's own
#     image is built on (it carries `nft` for the nftables policy datapath).
#
# Cached outside the repository in a directory named by the versions (default
# /var/cache/podnet/nodes/v<k8s>-containerd<c>-coredns<d>; PODNET_KUBERNETES_CACHE
# overrides /var/cache/podnet). Each artefact is made once and moved into place whole,
# so an interrupted run resumes where it stopped. Prints the directory last.
#
# Cold (empty Go build cache, after scripts/kubernetes.sh): see README, "Real nodes".
set -euo pipefail

K8S_VERSION=1.37.2
CONTAINERD_VERSION=2.4.2
COREDNS_VERSION=1.14.7
CNI_PLUGINS_VERSION=1.10.0
DEBIAN_SUITE=bookworm
with_e2e=false
for a in "$@"; do
  case $a in
    --e2e) with_e2e=true ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "podnet: unknown argument $a (use --e2e to build e2e.test too)" >&2; exit 2 ;;
  esac
done
cache_parent=${PODNET_KUBERNETES_CACHE:-/var/cache/podnet}
out="$cache_parent/nodes/v${K8S_VERSION}-containerd${CONTAINERD_VERSION}-coredns${COREDNS_VERSION}"
k8s_bins=(kubelet kube-proxy kube-scheduler agnhost pause)
containerd_bins=(containerd containerd-shim-runc-v2 ctr)
images=(podnet-lab-base pause agnhost glibc-dns-testing busybox coredns)

have_all() {
  for f in "$@"; do [ -e "$out/$f" ] || return 1; done
}
cni_bins=(portmap)
cni_current() {
  [ "$(cat "$out/cni/VERSION" 2>/dev/null)" = "$CNI_PLUGINS_VERSION" ] && have_all cni/portmap
}
wanted=("${k8s_bins[@]}" "${containerd_bins[@]}" coredns cni/portmap)
for i in "${images[@]}"; do wanted+=("images/$i.tar"); done
$with_e2e && wanted+=(e2e.test)
if have_all "${wanted[@]}" && cni_current; then
  echo "$out"
  exit 0
fi

missing_tools=()
for tool in go cc podman mmdebstrap; do
  command -v "$tool" >/dev/null || missing_tools+=("$tool")
done
if [ ${#missing_tools[@]} -gt 0 ]; then
  echo "podnet: ${missing_tools[*]} not on PATH: real nodes are built from Go modules (Go >= 1.26), pause.c (a C compiler) and images made with podman and mmdebstrap; run scripts/setup.sh (it installs gcc, podman, mmdebstrap) and install Go, then run $0 again" >&2
  exit 1
fi

work=$(mktemp -d /tmp/podnet-nodes-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
mkdir -p "$out/images"
started=$(date +%s)

. "$(dirname "$0")/lib/k8s-module.sh"
# One module directory for the node binaries and e2e.test.
k8s_dir() {
  mkdir -p "$work/k8s"
  cd "$work/k8s"
  k8s_module podnet.dev/lab-nodes
}

if ! have_all "${k8s_bins[@]}"; then
  echo "podnet: building Kubernetes v$K8S_VERSION node binaries (kubelet, kube-proxy, kube-scheduler, agnhost) and pause into $out" >&2
  (
    k8s_dir
    go get -tool k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/test/images/agnhost >&2
    mkdir -p "$work/bin"
    go build -trimpath -ldflags "$(k8s_ldflags)" -o "$work/bin/" \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/test/images/agnhost
    src=$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)
    cc -Os -Wall -Werror -static -DVERSION="v3.10.2-podnet" -o "$work/bin/pause" "$src/build/pause/linux/pause.c"
    for b in "${k8s_bins[@]}"; do mv "$work/bin/$b" "$out/$b"; done
  )
fi

if $with_e2e && ! have_all e2e.test; then
  echo "podnet: building the upstream e2e test binary (e2e.test) of Kubernetes v$K8S_VERSION into $out" >&2
  (
    k8s_dir
    # A test binary: its test-only dependencies come with -t.
    go get -t k8s.io/kubernetes/test/e2e >&2
    go test -c -trimpath -ldflags "$(k8s_ldflags)" -o "$work/e2e.test" k8s.io/kubernetes/test/e2e
    mv "$work/e2e.test" "$out/e2e.test"
  )
fi

if ! have_all "${containerd_bins[@]}"; then
  echo "podnet: building containerd v$CONTAINERD_VERSION into $out" >&2
  mkdir -p "$work/containerd"
  (
    cd "$work/containerd"
    go mod init podnet.dev/lab-containerd >/dev/null 2>&1
    pkg=github.com/containerd/containerd/v2
    go get -tool "$pkg@v$CONTAINERD_VERSION" >&2
    go get -tool $pkg/cmd/containerd $pkg/cmd/containerd-shim-runc-v2 $pkg/cmd/ctr >&2
    ldflags="-s -w -X $pkg/version.Version=v$CONTAINERD_VERSION -X $pkg/version.Package=$pkg"
    # No btrfs or zfs headers without CGO; the lab's snapshotter is overlayfs.
    mkdir -p bin
    go build -trimpath -tags "no_btrfs no_devmapper no_zfs" -ldflags "$ldflags" -o bin/ \
      $pkg/cmd/containerd $pkg/cmd/containerd-shim-runc-v2 $pkg/cmd/ctr
    for b in "${containerd_bins[@]}"; do mv "bin/$b" "$out/$b"; done
  )
fi

if ! have_all coredns; then
  echo "podnet: building CoreDNS v$COREDNS_VERSION into $out" >&2
  mkdir -p "$work/coredns"
  (
    cd "$work/coredns"
    go mod init podnet.dev/lab-coredns >/dev/null 2>&1
    go get -tool "github.com/coredns/coredns@v$COREDNS_VERSION" >&2
    go build -trimpath -ldflags "-s -w" -o coredns.new github.com/coredns/coredns
    mv coredns.new "$out/coredns"
  )
fi

if ! cni_current; then
  echo "podnet: building the CNI plugin portmap v$CNI_PLUGINS_VERSION into $out/cni" >&2
  mkdir -p "$work/cni" "$out/cni"
  (
    cd "$work/cni"
    go mod init podnet.dev/lab-cni-plugins >/dev/null 2>&1
    go get "github.com/containernetworking/plugins@v$CNI_PLUGINS_VERSION" >&2
    for b in "${cni_bins[@]}"; do
      go build -trimpath -ldflags "-s -w" -o "$b.new" "github.com/containernetworking/plugins/plugins/meta/$b"
    done
    for b in "${cni_bins[@]}"; do mv "$b.new" "$out/cni/$b"; done
    echo "$CNI_PLUGINS_VERSION" >"$out/cni/VERSION"
  )
fi

# Images. Each is built with podman from a context of its own and saved as a docker
# archive (it keeps the full name, which `ctr images import` restores).
image() { # name tag containerfile-text [files to copy into the context...]
  local name=$1 tag=$2 cf=$3
  shift 3
  [ -e "$out/images/$name.tar" ] && return 0
  local ctx="$work/img-$name"
  mkdir -p "$ctx"
  for f in "$@"; do cp -a "$f" "$ctx/"; done
  printf '%s\n' "$cf" >"$ctx/Containerfile"
  podman build -q -t "$tag" "$ctx" >/dev/null
  podman save -q --format docker-archive -o "$out/images/$name.tar.new" "$tag"
  # The archive is the cache; podman's store keeps only the base.
  podman rmi -f "$tag" >/dev/null
  mv "$out/images/$name.tar.new" "$out/images/$name.tar"
}

base=localhost/podnet-lab-base:$DEBIAN_SUITE
if [ ! -e "$out/images/podnet-lab-base.tar" ] || ! podman image exists "$base"; then
  echo "podnet: making the nodes' Debian $DEBIAN_SUITE base image with mmdebstrap" >&2
  # What the upstream test images carry (sh, curl, nc, dig, getent, ip, socat, iperf)
  # and nft (podnet's nftables policy datapath); no documentation or locales.
  mmdebstrap --variant=minbase --quiet \
    --include=bash,curl,netcat-openbsd,iproute2,dnsutils,socat,iperf,util-linux,procps,nftables,ca-certificates,busybox-static \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$DEBIAN_SUITE" "$work/base.tar" http://deb.debian.org/debian
  podman import -q "$work/base.tar" "$base" >/dev/null
  podman save -q --format docker-archive -o "$out/images/podnet-lab-base.tar.new" "$base"
  mv "$out/images/podnet-lab-base.tar.new" "$out/images/podnet-lab-base.tar"
fi
image pause registry.k8s.io/pause:3.10.2 \
  $'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]' "$out/pause"
image agnhost registry.k8s.io/e2e-test-images/agnhost:2.66.1 \
  "FROM $base"$'\nCOPY agnhost /agnhost\nENTRYPOINT ["/agnhost"]\nCMD ["pause"]' "$out/agnhost"
image glibc-dns-testing registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1 \
  "FROM $base"
# busybox: Debian's static busybox with a link per applet, on nothing else.
if [ ! -e "$out/images/busybox.tar" ]; then
  bb="$work/busybox-root"
  mkdir -p "$bb/bin"
  cid=$(podman create "$base" /bin/true)
  podman cp "$cid:/bin/busybox" "$bb/bin/busybox"
  podman rm "$cid" >/dev/null
  chmod 755 "$bb/bin/busybox"
  for a in $("$bb/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$bb/bin/$a"; done
  image busybox registry.k8s.io/e2e-test-images/busybox:1.37.0-2 \
    $'FROM scratch\nCOPY bin /bin\nCMD ["sh"]' "$bb/bin"
fi
image coredns registry.k8s.io/coredns/coredns:v$COREDNS_VERSION \
  $'FROM scratch\nCOPY coredns /coredns\nEXPOSE 53 53/udp\nENTRYPOINT ["/coredns"]' "$out/coredns"

"$out/kubelet" --version >&2
"$out/containerd" --version >&2
echo "podnet: real-node binaries and images ready in $(($(date +%s) - started)) s" >&2
echo "$out"
