#!/usr/bin/env bash
# Installs what podnet needs to build and test on Debian 12, as root. Sourced by the
# other scripts; safe to run again (installs only what is missing).
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "podnet: run this as root: it creates network namespaces and installs packages" >&2
  exit 1
fi

# clang: builds the eBPF datapath. iproute2 (ip, tc): used by tests to break things on
# purpose. containernetworking-plugins: the reference plugins (benchmark baseline,
# chaining tests). podman, runc, busybox-static, iptables: the real-runtime test.
# etcd-server: the lab on a real etcd. iperf3: the datapath benchmark. nftables,
# procps (nft, sysctl): lab fault injection. openssl: the Kubernetes lab's certificates.
# bpftool: a test reads the eBPF object's BTF to check the map layouts.
# protobuf-compiler: the etcd client's gRPC code is generated at build time.
packages=(clang gcc libc6-dev mmdebstrap iproute2 containernetworking-plugins podman runc busybox-static iptables tar etcd-server iperf3 nftables procps openssl bpftool protobuf-compiler)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "podnet: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
  echo "podnet: no Rust toolchain found: install one with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi
# The suite checks formatting and lints: both components come with rustup.
for tool in rustfmt clippy-driver; do
  if ! command -v "$tool" >/dev/null; then
    if command -v rustup >/dev/null; then
      rustup component add rustfmt clippy
    else
      echo "podnet: $tool is missing: install the rustfmt and clippy components of your Rust toolchain, then run this again" >&2
      exit 1
    fi
  fi
done
