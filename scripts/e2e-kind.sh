#!/usr/bin/env bash
# The e2e suite (tests/e2e) on its kind backend, on a machine with Docker (there is no
# Docker engine on the development machines, where the kind backend skips and says why;
# the same tests run there on a real kubelet + containerd node, from scripts/test.sh):
#   bash scripts/e2e-kind.sh            # or: make e2e; extra arguments go to pytest
# Steps: create a kind cluster (tests/e2e/kind-config.yaml, 2 nodes) unless it exists;
# build the agent image (Dockerfile) and load it into the nodes; load the ubuntu image the
# tests run; helm install charts/tpfilter with the image overridden; wait until the
# DaemonSet's ready count equals its desired count; run `pytest tests/e2e -m kind`.
# The suite's last test runs `helm uninstall`: a kept cluster is installed again next run.
# The cluster is deleted at the end unless KEEP_CLUSTER=1 (then a second run reuses it
# and upgrades the release).
#
# Environment (all optional):
#   KIND_CLUSTER      cluster name (tpfilter-e2e)
#   KIND_NODE_IMAGE   kindest/node image to pin the Kubernetes version (kind's default)
#   IMAGE_REPO/IMAGE_TAG  agent image name (tpfilter / e2e)
#   UBUNTU_IMAGE      the workload image (ubuntu:24.04)
#   NAMESPACE/RELEASE where the chart goes (tpfilter-system / tpfilter)
#   KEEP_CLUSTER=1    keep the cluster afterwards
#   ARTIFACTS         directory for failure diagnostics (/tmp/tpfilter-e2e-<cluster>)
set -euo pipefail
cd "$(dirname "$0")/.."

KIND_CLUSTER=${KIND_CLUSTER:-tpfilter-e2e}
IMAGE_REPO=${IMAGE_REPO:-tpfilter}
IMAGE_TAG=${IMAGE_TAG:-e2e}
IMAGE="$IMAGE_REPO:$IMAGE_TAG"
UBUNTU_IMAGE=${UBUNTU_IMAGE:-ubuntu:24.04}
NAMESPACE=${NAMESPACE:-tpfilter-system}
RELEASE=${RELEASE:-tpfilter}
ARTIFACTS=${ARTIFACTS:-${TMPDIR:-/tmp}/tpfilter-e2e-$KIND_CLUSTER}
KUBECONFIG_FILE="$ARTIFACTS/kubeconfig"
ROLLOUT_TIMEOUT=${ROLLOUT_TIMEOUT:-300}
export PATH="${TPFILTER_CACHE:-/var/cache/tpfilter}/bin:$PATH"  # helm from build-k8s-bins.sh

log() { echo "e2e-kind: $*" >&2; }
die() { log "$*"; exit 1; }

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
docker info >/dev/null 2>&1 || die "no Docker engine (docker info fails): kind cannot run here"

mkdir -p "$ARTIFACTS"
kubectl() { command kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }

cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    log "failed ($rc); cluster state:"
    kubectl get pods -A -o wide >&2 || true
    kubectl -n "$NAMESPACE" describe daemonset >&2 || true
    kubectl -n "$NAMESPACE" logs -l "app.kubernetes.io/instance=$RELEASE" --tail=100 \
      --prefix >&2 || true
  fi
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    log "keeping cluster $KIND_CLUSTER (kubeconfig: $KUBECONFIG_FILE)"
  else
    kind delete cluster --name "$KIND_CLUSTER" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT

# 1. Cluster.
if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  log "reusing cluster $KIND_CLUSTER"
  kind get kubeconfig --name "$KIND_CLUSTER" >"$KUBECONFIG_FILE"
else
  log "creating cluster $KIND_CLUSTER"
  kind create cluster --name "$KIND_CLUSTER" --config tests/e2e/kind-config.yaml \
    --kubeconfig "$KUBECONFIG_FILE" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi

# 2. Images. The build context is only what the Dockerfile copies (a tar on stdin), so the
# repository's .venv and caches are never sent to the daemon.
log "building $IMAGE"
tar -c --exclude=__pycache__ --exclude='*.pyc' \
  Dockerfile pyproject.toml README.md operator/tpfilter bpf \
  scripts/agent-entrypoint.sh image | docker build -t "$IMAGE" -
kind load docker-image "$IMAGE" --name "$KIND_CLUSTER"
docker image inspect "$UBUNTU_IMAGE" >/dev/null 2>&1 || docker pull "$UBUNTU_IMAGE"
kind load docker-image "$UBUNTU_IMAGE" --name "$KIND_CLUSTER"

# 3. The chart, with the image just loaded (never pulled).
log "installing charts/tpfilter as $RELEASE in $NAMESPACE"
helm upgrade --install "$RELEASE" charts/tpfilter \
  --kubeconfig "$KUBECONFIG_FILE" --namespace "$NAMESPACE" --create-namespace \
  --set image.repository="$IMAGE_REPO" --set image.tag="$IMAGE_TAG" \
  --set image.pullPolicy=Never \
  --set tracefs=true \
  --set-string "podAnnotations.tpfilter-e2e/image-id=$(docker image inspect -f '{{.Id}}' "$IMAGE")"
# (The annotation rolls the pods when a reused cluster gets a rebuilt image of the same tag.)
# (tracefs=true: the node's tracefs (kind's nodes run systemd, which mounts it) in the
# agent's container, for the tracepoint policies of the suite, as on the real node.)

# 4. Ready on every node: ready == desired (and every pod runs the current template).
ds=$(kubectl -n "$NAMESPACE" get daemonsets -o name \
  -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=agent")
[ -n "$ds" ] || die "no agent DaemonSet in release $RELEASE"
log "waiting for $ds: ready == desired"
deadline=$((SECONDS + ROLLOUT_TIMEOUT))
while :; do
  # '|'-separated: a status field that is still unset (omitted) must not shift the others.
  IFS='|' read -r gen observed desired ready updated < <(kubectl -n "$NAMESPACE" get "$ds" \
    -o jsonpath='{.metadata.generation}|{.status.observedGeneration}|{.status.desiredNumberScheduled}|{.status.numberReady}|{.status.updatedNumberScheduled}{"\n"}') || true
  if [ -n "${gen:-}" ] && [ "$gen" = "${observed:-}" ] && [ "${desired:-0}" -gt 0 ] &&
    [ "${ready:-}" = "$desired" ] && [ "${updated:-}" = "$desired" ]; then
    log "$ds ready on $ready/$desired nodes"
    break
  fi
  ((SECONDS < deadline)) || die "$ds not ready after ${ROLLOUT_TIMEOUT}s: ${ready:-0}/${desired:-0} ready"
  sleep 3
done

# 5. The suite.
export TPFILTER_E2E_KUBECONFIG="$KUBECONFIG_FILE" TPFILTER_E2E_NAMESPACE="$NAMESPACE" \
  TPFILTER_E2E_RELEASE="$RELEASE" TPFILTER_E2E_ARTIFACTS="$ARTIFACTS" \
  TPFILTER_E2E_UBUNTU_IMAGE="$UBUNTU_IMAGE"
PYTEST=.venv/bin/pytest
[ -x "$PYTEST" ] || PYTEST="python3 -m pytest"
log "running the suite (diagnostics of failures go to $ARTIFACTS)"
$PYTEST tests/e2e -m kind "$@"
