#!/usr/bin/env bash
# Builds, from source through the Go module proxy, the control-plane and node binaries that the
# integration and real-node tests need (kube-apiserver, etcd, helm, kubectl; kubelet,
# kube-scheduler, kube-controller-manager) at pinned versions, and caches them outside the
# repo, keyed by version: $CACHE/bin/<name>-<version> (e.g. kube-apiserver-$KUBE_VERSION,
# etcd-$ETCD_VERSION, helm-$HELM_VERSION) and stable symlinks $CACHE/bin/<name>.
# CACHE is ${TPFILTER_CACHE:-/var/cache/tpfilter}; GOMODCACHE and GOCACHE live under it.
# Idempotent: a binary that exists and reports its pinned version is not rebuilt, so a
# second run costs seconds. A cold run takes tens of minutes on 2 cores (kube-apiserver
# dominates); builds run one at a time with -p 2 to stay well inside 24 GiB.
#
# The Go modules under hack/k8s-bins/ pin every dependency (go.mod + go.sum):
#   kube-apiserver/  requires k8s.io/kubernetes and replaces each staging module with its
#                    published tag (kubernetes' own go.mod replaces them with ./staging/...).
#   etcd/            a main calling etcdmain.Main, requiring go.etcd.io/etcd/server/v3.
# helm's go.mod has no replace block, so it is built with `go install helm.sh/helm/v3/cmd/helm@v`.
# Changing KUBE_VERSION or ETCD_VERSION means regenerating those go.mod/go.sum files too
# (see hack/k8s-bins/README.md); the script checks that they agree.
set -euo pipefail

KUBE_VERSION=v1.33.13   # k8s.io/kubernetes; staging modules at v0.33.13
ETCD_VERSION=v3.5.21    # go.etcd.io/etcd/server/v3 (envtest's etcd for Kubernetes 1.33)
HELM_VERSION=v3.19.5    # helm.sh/helm/v3
HELM_K8S_MINOR=34       # minor of k8s.io/client-go in helm's go.mod (v0.34.2): default capabilities

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODDIR=$ROOT/hack/k8s-bins
CACHE=${TPFILTER_CACHE:-/var/cache/tpfilter}
BIN=$CACHE/bin

GO=${GO:-}
if [ -z "$GO" ]; then
  if command -v go >/dev/null 2>&1; then GO=$(command -v go)
  elif [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go
  else echo "build-k8s-bins: no Go toolchain (go on PATH or /usr/local/go/bin/go)" >&2; exit 1
  fi
fi

export GOMODCACHE=$CACHE/gomod
export GOCACHE=$CACHE/gocache
export GOTOOLCHAIN=local   # never fetch another toolchain
export CGO_ENABLED=0
# GOPROXY / GOSUMDB: the environment's defaults.

mkdir -p "$BIN" "$GOMODCACHE" "$GOCACHE"

# One run at a time per cache (parallel test sessions may call this).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE/.build.lock"
  flock 9
fi

go_minor=$("$GO" env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
if ! [[ $go_minor =~ ^[0-9]+$ ]] || ((go_minor < 24)); then
  echo "build-k8s-bins: need Go >= 1.24 (tool directives), have $("$GO" env GOVERSION)" >&2
  exit 1
fi

# The pinned versions must match the committed modules.
grep -qE "^[[:space:]]*k8s\.io/kubernetes ${KUBE_VERSION//./\\.}( |\$)" "$MODDIR/kube-apiserver/go.mod" || {
  echo "build-k8s-bins: $MODDIR/kube-apiserver/go.mod does not require k8s.io/kubernetes $KUBE_VERSION" >&2; exit 1; }
grep -qE "go\.etcd\.io/etcd/server/v3 ${ETCD_VERSION//./\\.}( |\$)" "$MODDIR/etcd/go.mod" || {
  echo "build-k8s-bins: $MODDIR/etcd/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION" >&2; exit 1; }

# version_ok NAME PATH: the binary runs and reports its pinned version.
version_ok() {
  local name=$1 path=$2 out
  [ -x "$path" ] || return 1
  case $name in
    kube-apiserver) out=$("$path" --version 2>&1) && [[ $out == "Kubernetes $KUBE_VERSION" ]] ;;
    etcd)           out=$("$path" --version 2>&1) && [[ $out == *"etcd Version: ${ETCD_VERSION#v}"* ]] ;;
    helm)           out=$("$path" version --short 2>&1) && [[ $out == "$HELM_VERSION"* ]] ;;
    kubectl)        out=$("$path" version --client 2>&1) && [[ $out == *"Client Version: $KUBE_VERSION"* ]] ;;
    kubelet|kube-scheduler|kube-controller-manager)
                    out=$("$path" --version 2>&1) && [[ $out == "Kubernetes $KUBE_VERSION" ]] ;;
  esac
}

build_kube_apiserver() { build_kube_cmd kube-apiserver "$1"; }
# kubectl from the same module and version: the machine's own kubectl may be missing or old.
build_kubectl() { build_kube_cmd kubectl "$1"; }
# The real node of the e2e suite (tpfilter_dev.realnode): kubelet and the two controllers
# that make DaemonSet pods and schedule them. Same module, so the module and build caches
# are shared: ~1-3 min more on a warm cache.
build_kubelet() { build_kube_cmd kubelet "$1"; }
build_kube_scheduler() { build_kube_cmd kube-scheduler "$1"; }
build_kube_controller_manager() { build_kube_cmd kube-controller-manager "$1"; }

build_kube_cmd() { # $1: command under k8s.io/kubernetes/cmd, $2: output path
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local ld="-s -w"
  ld+=" -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
  ld+=" -X k8s.io/component-base/version.gitMajor=1"
  ld+=" -X k8s.io/component-base/version.gitMinor=$minor"
  ld+=" -X k8s.io/component-base/version.gitTreeState=clean"
  ld+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
  ld+=" -X k8s.io/client-go/pkg/version.gitMajor=1"
  ld+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  (cd "$MODDIR/kube-apiserver" &&
    GOFLAGS="-mod=readonly -buildvcs=false" "$GO" build -p 2 -trimpath -ldflags "$ld" \
      -o "$2" "k8s.io/kubernetes/cmd/$1")
}

build_etcd() {
  (cd "$MODDIR/etcd" &&
    GOFLAGS="-mod=readonly -buildvcs=false" "$GO" build -p 2 -trimpath -ldflags "-s -w" -o "$1" .)
}

build_helm() {
  local gobin ld="-s -w"
  ld+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1"
  ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR"
  ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
  ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR"
  gobin=$(mktemp -d "$BIN/.helm-gobin.XXXXXX")
  # Outside any module: `go install pkg@version` uses helm's own go.mod and go.sum.
  (cd "$gobin" && GOBIN=$gobin GOFLAGS="-buildvcs=false" "$GO" install -p 2 -trimpath \
      -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
  mv -f "$gobin/helm" "$1"
  rmdir "$gobin"
}

# ensure NAME VERSION BUILD_FUNC
ensure() {
  local name=$1 version=$2 fn=$3
  local path=$BIN/$name-$version tmp start secs
  if version_ok "$name" "$path"; then
    echo "build-k8s-bins: $name $version: cached ($path)"
  else
    echo "build-k8s-bins: $name $version: building (cold builds take minutes)..."
    tmp=$BIN/.$name-$version.tmp.$$
    rm -f "$tmp"
    start=$SECONDS
    if ! "$fn" "$tmp"; then
      rm -f "$tmp"
      echo "build-k8s-bins: $name $version: build FAILED" >&2
      return 1
    fi
    mv -f "$tmp" "$path"
    secs=$((SECONDS - start))
    if ! version_ok "$name" "$path"; then
      echo "build-k8s-bins: $name $version: built, but it does not report version $version" >&2
      return 1
    fi
    echo "build-k8s-bins: $name $version: built in ${secs}s ($path)"
  fi
  ln -sfn "$name-$version" "$BIN/$name"
}

total=$SECONDS
ensure kube-apiserver "$KUBE_VERSION" build_kube_apiserver
ensure etcd "$ETCD_VERSION" build_etcd
ensure helm "$HELM_VERSION" build_helm
ensure kubectl "$KUBE_VERSION" build_kubectl
ensure kubelet "$KUBE_VERSION" build_kubelet
ensure kube-scheduler "$KUBE_VERSION" build_kube_scheduler
ensure kube-controller-manager "$KUBE_VERSION" build_kube_controller_manager
echo "build-k8s-bins: done in $((SECONDS - total))s; binaries:"
for name in kube-apiserver etcd helm kubectl kubelet kube-scheduler kube-controller-manager; do
  echo "  $BIN/$name -> $(readlink "$BIN/$name")"
done
