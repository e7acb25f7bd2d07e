# Sourced by scripts/kubernetes.sh and scripts/real-nodes.sh: building
# k8s.io/kubernetes packages outside the Kubernetes tree. Needs K8S_VERSION.

# Makes the current directory a Go module that requires k8s.io/kubernetes
# v$K8S_VERSION. Its staging modules (k8s.io/api, client-go, ...) point at ./staging
# with v0.0.0 requirements there; outside its own tree each needs a replace to the
# published v0.<minor>.<patch> of the same release.
k8s_module() {
  [ -f go.mod ] && return 0
  go mod init "$1" >/dev/null 2>&1
  local modfile
  modfile=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -n "$modfile" ] || { echo "podnet: could not download k8s.io/kubernetes@v$K8S_VERSION from the Go module proxy" >&2; exit 1; }
  local staging_version="v0.${K8S_VERSION#1.}"
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile" | while read -r m; do
    go mod edit -replace "$m=$m@$staging_version"
  done
  go mod edit -require "k8s.io/kubernetes@v$K8S_VERSION"
}

# The -ldflags that stamp the release's version into the binaries (what
# `kubelet --version` and the API server's /version report).
k8s_ldflags() {
  local minor=${K8S_VERSION#1.}
  minor=${minor%%.*}
  local f="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f="$f -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  echo "$f"
}
